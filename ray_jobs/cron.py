"""A minimal 5-field cron parser: minute hour day-of-month month day-of-week.

Supports `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, and names (jan, mon).
Day-of-month and day-of-week follow cron's rule: when both are restricted, either may match.
Times are naive datetimes in the scheduler's time zone (UTC in `distill schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from distill.core.errors import DistillError

MONTHS = {m: i for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
          ("month", 1, 12, MONTHS), ("day of week", 0, 6, DAYS))


class CronError(DistillError):
    pass


def _number(text: str, names: dict[str, int], name: str, lo: int, hi: int) -> int:
    value = names.get(text.lower()) if text.lower() in names else None
    if value is None:
        if not text.isdigit():
            raise CronError(f"cron {name}: {text!r} is not a number")
        value = int(text)
        if name == "day of week" and value == 7:
            value = 0  # 7 is Sunday too
    if not lo <= value <= hi:
        raise CronError(f"cron {name}: {value} is outside {lo}-{hi}")
    return value


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {name}: bad step {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _number(a, names, name, lo, hi), _number(b, names, name, lo, hi)
            if start > end:
                raise CronError(f"cron {name}: range {base} runs backwards")
        else:
            start = _number(base, names, name, lo, hi)
            end = hi if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        parts = expr.split()
        if len(parts) != 5:
            raise CronError(f"cron {expr!r}: expected 5 fields (minute hour day month weekday), "
                            f"got {len(parts)}")
        sets = [_field(p, name, lo, hi, names) for p, (name, lo, hi, names) in zip(parts, FIELDS)]
        return cls(expr, *sets, parts[2] != "*", parts[4] != "*")

    def matches(self, t: datetime) -> bool:
        return (t.minute in self.minutes and t.hour in self.hours and t.month in self.months
                and self._day_matches(t))

    def next_after(self, t: datetime) -> datetime:
        """The first matching minute strictly after `t`."""
        t = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)  # e.g. Feb 29 on a Monday is rare, not impossible
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if self.matches(t):
                return t
            t += timedelta(minutes=1)
        raise CronError(f"cron {self.expr!r} never fires")

    def _day_matches(self, t: datetime) -> bool:
        day_ok = t.day in self.days
        weekday_ok = (t.weekday() + 1) % 7 in self.weekdays  # cron: 0 = Sunday
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok
