"""Label collapse: a teacher that gives one label to (nearly) every prompt.

A collapsed teacher still looks "consistent" to a vote (agreement near 1.0), so the answers'
label distribution is compared with the gold's (or, without gold, the uniform prior): one
label taking at least a threshold share of the answers, while the reference gives it less
than that and every other label together gets at most half the share the reference gives
them, is collapse. (So 100% 'positive' against a 62% positive gold is collapse at 0.9, 70%
'positive' against 50% is not, and a gold that is itself one label flags nothing.)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

from distill.core.config import CheckConfig
from distill.core.errors import TeacherCheckError

INVALID = "(no valid label)"


@dataclass(frozen=True)
class LabelCheck:
    level: Literal["ok", "warn", "stop"]
    label: str | None  # the most frequent answer label
    share: float  # its share of the answers
    reference_share: float  # its share in the gold (or the prior)
    reference: str  # "gold" | "uniform prior"
    n: int
    answers: dict[str, int] = field(default_factory=dict)  # label -> count
    expected: dict[str, float] = field(default_factory=dict)  # label -> reference share

    def describe(self, where: str) -> str:
        return (f"{where}: the teacher answered {self.label!r} for {self.answers.get(self.label, 0)}"
                f" of {self.n} ({self.share:.0%}); the {self.reference} has it for "
                f"{self.reference_share:.0%}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["share"], out["reference_share"] = round(self.share, 4), round(self.reference_share, 4)
        out["expected"] = {k: round(v, 4) for k, v in self.expected.items()}
        return out


def label_counts(answers: Sequence[str | None], labels: Sequence[str]) -> dict[str, int]:
    counts = Counter(a if a in labels else INVALID for a in answers)
    ordered = {label: counts.get(label, 0) for label in labels}
    if counts.get(INVALID):
        ordered[INVALID] = counts[INVALID]
    return ordered


def reference_shares(gold: Sequence[str | None] | None, labels: Sequence[str]) -> tuple[
        dict[str, float], str]:
    """Each label's share in the gold, or the uniform prior where there is no gold."""
    known = [g for g in (gold or []) if g is not None]
    if known:
        counts = Counter(known)
        return {label: counts.get(label, 0) / len(known) for label in labels}, "gold"
    return {label: 1 / len(labels) for label in labels}, "uniform prior"


def check_labels(answers: Sequence[str | None], gold: Sequence[str | None] | None,
                 labels: Sequence[str], warn: float, stop: float) -> LabelCheck:
    """The answers' label distribution against the reference, with the collapse level."""
    counts = label_counts(answers, labels)
    expected, reference = reference_shares(gold, labels)
    n = len(answers)
    valid = {k: v for k, v in counts.items() if k != INVALID}
    if not n or not any(valid.values()):
        return LabelCheck("ok", None, 0.0, 0.0, reference, n, counts, expected)
    top = max(valid, key=lambda k: valid[k])
    share, ref = valid[top] / n, expected[top]
    squeezed = 1 - share <= (1 - ref) / 2  # the other labels at half their share or less

    def hit(threshold: float) -> bool:
        return squeezed and share >= threshold > ref

    level = "stop" if hit(stop) else "warn" if hit(warn) else "ok"
    if level == "stop" and reference != "gold" and share < 1.0:
        level = "warn"  # the prior is a guess (classes are rarely balanced): only all-one-label stops
    return LabelCheck(level, top, share, ref, reference, n, counts, expected)


def enforce(found: LabelCheck, check: CheckConfig, where: str, then: str) -> str | None:
    """The watches' rule: None when fine, else the warning to show; a stop against the gold
    (not a guessed prior) raises, unless `check.on_fail: warn`. `then`: what the error adds."""
    if found.level == "ok":
        return None
    message = "label collapse: " + found.describe(where)
    if found.level == "stop" and found.reference == "gold" and check.on_fail == "stop":
        raise TeacherCheckError(f"{message} (check.collapse_stop {check.collapse_stop}). {then}")
    return message
