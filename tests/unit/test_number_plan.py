"""The number plan: E.164 numbers to extensions, one pure rule (contracts.v1.numbers)."""

from __future__ import annotations

import pytest

from callrec.cli import build_parser, config_from_args
from contracts.v1.numbers import NumberPlan, NumberRule, matches_any


def test_rule_keeps_the_last_digits_of_a_whole_match() -> None:
    rule = NumberRule.parse("+4930123452XXX/4")
    assert rule.apply("+4930123452123") == "2123"
    assert rule.apply("+49301234521234") is None  # longer: not this plan's number
    assert rule.apply("+493012345212") is None  # shorter
    assert rule.apply("+4930123453123") is None  # another block
    assert rule.apply("+493012345212a") is None  # X is a digit only
    assert NumberRule.parse("+49301234xxxx").keep == 4  # N defaults to the X count
    assert NumberRule.parse("004930123452XXX/4").apply("004930123452999") == "2999"


@pytest.mark.parametrize("bad", ["", "abc", "+49/0", "12X/9", "+4930 X", "X/100", "1+2X"])
def test_bad_rules_are_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match=r"number rule|keeps"):
        NumberRule.parse(bad)


def test_first_match_wins_and_separators_are_ignored() -> None:
    plan = NumberPlan.parse(["+4930123452XXX/4", "+49301234XXXX/5", "0301234XXXX"])
    assert plan.extension("+49 30 1234-52(123)") == "2123"
    assert plan.extension("+493012346123") == "46123"
    assert plan.extension("03012349876") == "9876"
    assert plan.extension("+4989123456") is None
    assert plan.forms(["+4930123452123", "1001", ""]) == {"+4930123452123", "2123", "1001"}
    assert NumberPlan().forms(["+4930123452123"]) == {"+4930123452123"}
    assert plan.fingerprint() == "+4930123452XXX/4,+49301234XXXX/5,0301234XXXX/4"


def test_visibility_of_one_recording_uses_the_same_rule() -> None:
    plan = NumberPlan.parse(["+4930123452XXX/4"])
    assert matches_any(plan, ["+4930123452123", "+4989555"], ["2123"])
    assert not matches_any(plan, ["+4930123452123"], ["123"])  # exact, not a substring
    assert not matches_any(plan, ["+4930123452123"], [])
    assert not matches_any(NumberPlan(), ["+4930123452123"], ["2123"])


def test_cli_flag_and_env_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(
        ["up", "--number-plan", "+4930123452xxx/4", "--number-plan", "0301234XXXX"])
    config = config_from_args(args)
    assert config.number_plan == ("+4930123452XXX/4", "0301234XXXX/4")
    assert config.numbers.extension("+4930123452777") == "2777"
    monkeypatch.setenv("CALLREC_NUMBER_PLAN", "+4930123452XXX/4, 0301234XXXX")
    config = config_from_args(build_parser().parse_args(["up"]))
    assert len(config.numbers.rules) == 2
    with pytest.raises(ValueError):
        config_from_args(build_parser().parse_args(["up", "--number-plan", "nonsense"]))
