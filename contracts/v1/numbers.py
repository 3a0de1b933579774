"""Which extension a recorded number belongs to: the node's number plan, one pure rule.

PBXs send the recorded party's number in whatever form their dial plan uses: CUCM's
`x-nearendaddr` is usually the bare extension, a SIPREC participant's address often the
full E.164 number (`+4930123452123`). A user's extensions are written once, as
extensions, so the catalog and the web both map every participant number through the
same plan before they compare it with an extension.

A plan is an ordered list of rules, each written `PATTERN` or `PATTERN/N`:

- PATTERN is the whole number, digits (and a leading `+`) taken literally and each `X`
  standing for one digit: `+4930123452XXX` matches `+4930123452123` and nothing longer
  or shorter;
- the extension is the last N digits of the matched number (N defaults to the number
  of `X`s): `+4930123452XXX/4` makes `+4930123452123` extension `2123`.

The first rule that matches decides; a number no rule matches is only itself. Visual
separators of tel URIs (RFC 3966: `-`, `.`, `(`, `)`, spaces) are ignored when matching.
A number is indexed and compared as itself *and* its extension, so a plain search
for the E.164 form keeps working and a user with extension `2123` sees that call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_RULE = re.compile(r"^(\+?[0-9X]*X[0-9X]*|\+?[0-9]+)(?:/([1-9][0-9]?))?$")
_SEPARATORS = re.compile(r"[\s\-.()]")
MAX_RULES = 100


@dataclass(frozen=True)
class NumberRule:
    """One line of the plan: a whole-number pattern and how many trailing digits to keep."""

    pattern: str
    keep: int

    @classmethod
    def parse(cls, text: str) -> NumberRule:
        spec = text.strip().upper()
        match = _RULE.match(spec)
        if not match:
            raise ValueError(
                f"number rule {text!r}: expected a pattern of digits and X (one digit "
                f"each), optionally '+' first and '/N' last, e.g. +4930123452XXX/4"
            )
        pattern, keep = match.group(1), match.group(2)
        digits = len(pattern.lstrip("+"))
        width = int(keep) if keep else pattern.count("X")
        if width == 0 or width > digits:
            raise ValueError(f"number rule {text!r}: keeps {width} digits of {digits}")
        return cls(pattern, width)

    def apply(self, number: str) -> str | None:
        """The extension of `number` under this rule, None when it does not match."""
        if len(number) != len(self.pattern):
            return None
        for want, got in zip(self.pattern, number, strict=True):
            if want == "X":
                if not got.isdigit() or not got.isascii():
                    return None
            elif want != got:
                return None
        return number[-self.keep:]

    def __str__(self) -> str:
        return f"{self.pattern}/{self.keep}"


@dataclass(frozen=True)
class NumberPlan:
    """The node's rules, in order (empty: every number is only itself)."""

    rules: tuple[NumberRule, ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[str]) -> NumberPlan:
        parsed = tuple(NumberRule.parse(rule) for rule in rules if rule.strip())
        if len(parsed) > MAX_RULES:
            raise ValueError(f"number plan: at most {MAX_RULES} rules")
        return cls(parsed)

    def extension(self, number: str) -> str | None:
        """The extension `number` maps to under the first matching rule, else None."""
        bare = _SEPARATORS.sub("", number)
        for rule in self.rules:
            found = rule.apply(bare)
            if found is not None:
                return found
        return None

    def forms(self, numbers: Iterable[str]) -> set[str]:
        """Every form a recording's numbers are known by: each as sent, plus its extension."""
        out: set[str] = set()
        for number in numbers:
            if not number:
                continue
            out.add(number)
            found = self.extension(number)
            if found is not None:
                out.add(found)
        return out

    def fingerprint(self) -> str:
        """Stable text of the plan: a projection indexed under another plan is rebuilt."""
        return ",".join(str(rule) for rule in self.rules)


def matches_any(plan: NumberPlan, numbers: Iterable[str], extensions: Iterable[str]) -> bool:
    """True when one of a recording's numbers (or its extension) is one of `extensions`:
    the single-recording form of the catalog's visibility filter."""
    wanted = set(extensions)
    return bool(wanted) and not wanted.isdisjoint(plan.forms(numbers))
