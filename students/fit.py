"""Over-long inputs are shortened, never dropped: the student's prompt and its answer must fit
`student.max_seq_len`, or TRL cuts the example from the end (the answer goes first) and then
drops it as fully truncated, without a word.

The input alone is cut (`student.shorten`; where the template names several columns, the
longest of them): `middle` keeps its head and tail (where long
documents tend to say what they are about) with " ... " between them, `end` keeps its start.
The instruction, the chat template and the answer are never cut. The prompt budget is
`max_seq_len` less the longest training answer (and the template's end-of-turn tokens); it is
written into the stage's training summary, and eval, bench and serving cut inputs to that same
budget, so the student sees at inference the input it learnt from.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.core.config import RunConfig
from distill.core.errors import ConfigError
from distill.core.messages import Message, input_values, student_messages

TEMPLATE_SLACK = 8  # end-of-turn and role tokens around the answer
ELLIPSIS = " ... "
MIN_INPUT_TOKENS = 16


@dataclass
class InputFitter:
    """Builds the student's chat for an input, shortened where it would not fit `budget`
    prompt tokens."""

    cfg: RunConfig
    tokenizer: object
    budget: int
    shortened: int = 0
    longest_cut: int = 0  # most input tokens removed from one example

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_tokens(self, messages: list[Message]) -> int:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return len(self.tokens(text))

    def messages(self, text: str | dict[str, str], answer_tokens: int = 0) -> list[Message]:
        """The student's chat; `answer_tokens`: a training answer's length (0 at inference)."""
        budget = min(self.budget,
                     self.cfg.student.max_seq_len - answer_tokens - TEMPLATE_SLACK)
        chat = student_messages(self.cfg.task, text)
        over = self.prompt_tokens(chat) - budget
        if over <= 0:
            return chat
        values = input_values(self.cfg.task, text)
        ids = {f: self.tokens(v) for f, v in values.items()}
        keep = {f: len(i) for f, i in ids.items()}
        ellipsis = len(self.tokens(ELLIPSIS))
        while over > 0:
            # The longest column (as cut so far) gives way: a title stays whole, the body is
            # cut, and a second long column only once the first is down to its size.
            field = max(keep, key=keep.get)
            if keep[field] <= MIN_INPUT_TOKENS:
                raise ConfigError("student.max_seq_len", [
                    f"{self.cfg.student.max_seq_len} tokens leave fewer than {MIN_INPUT_TOKENS} "
                    f"for the input (the prompt around it and the answer take the rest): "
                    "raise student.max_seq_len, or shorten the instruction or the answers"])
            first_cut = ellipsis if keep[field] == len(ids[field]) else 0
            # Re-tokenising a cut can shift a token: at least 2 more each round.
            keep[field] = max(MIN_INPUT_TOKENS, keep[field] - max(over, 2) - first_cut)
            chat = student_messages(self.cfg.task, {
                f: self._cut(ids[f], keep[f]) if keep[f] < len(ids[f]) else values[f]
                for f in values})
            over = self.prompt_tokens(chat) - budget
        self.shortened += 1
        self.longest_cut = max(self.longest_cut, sum(len(ids[f]) - keep[f] for f in ids))
        return chat

    def _cut(self, ids: list[int], keep: int) -> str:
        decode = self.tokenizer.decode
        if self.cfg.student.shorten == "end":
            return decode(ids[:keep]).rstrip() + ELLIPSIS.rstrip()
        head = (keep + 1) // 2
        return (decode(ids[:head]).rstrip() + ELLIPSIS + decode(ids[len(ids) - (keep - head):])
                .lstrip())

    def answer_tokens(self, answer: str) -> int:
        return len(self.tokens(answer))

    def summary(self, total: int) -> dict:
        return {"inputs_shortened": self.shortened, "inputs_total": total,
                "most_tokens_cut": self.longest_cut, "prompt_budget": self.budget,
                "shorten": self.cfg.student.shorten}


def training_fitter(cfg: RunConfig, tokenizer, answers: list[str],
                    budget: int | None = None) -> InputFitter:
    """The budget leaves room for the longest training answer (or is given: DPO keeps SFT's)."""
    if budget is None:
        longest = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers),
                      default=0)
        budget = cfg.student.max_seq_len - longest - TEMPLATE_SLACK
    return InputFitter(cfg, tokenizer, budget)


def load_fitter(cfg: RunConfig, budget: int | None, tokenizer=None) -> InputFitter:
    """For inference: the budget a stage trained with (None: max_seq_len less the eval
    answer length, for adapters trained before budgets were recorded)."""
    if tokenizer is None:
        from distill.core.models import resolve
        from students.modeling import load_tokenizer

        tokenizer = load_tokenizer(resolve(cfg.student.model).path)
    if budget is None:
        budget = cfg.student.max_seq_len - cfg.answer_tokens - TEMPLATE_SLACK
    return InputFitter(cfg, tokenizer, budget)
