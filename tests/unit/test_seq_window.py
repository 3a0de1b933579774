"""SeqWindow remembers what a set of every sequence number would, where it is asked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.capture.timeline import MAX_SEQ_JUMP, SeqWindow


def test_the_window_covers_every_number_a_run_can_still_be_asked_about() -> None:
    assert SeqWindow.SIZE > MAX_SEQ_JUMP + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-MAX_SEQ_JUMP, MAX_SEQ_JUMP), st.integers(0, 40)),
                min_size=1, max_size=200))
def test_agrees_with_a_set_within_reach_of_the_newest(steps: list[tuple[int, int]]) -> None:
    window, seen = SeqWindow(), set[int]()
    top = 10_000
    for jump, length in steps:
        first = top + jump
        last = first + length
        for probe in range(max(first - 5, top - MAX_SEQ_JUMP - 1), last + 5):
            assert (probe in window) == (probe in seen), probe
        if length == 0:
            window.add(first)
        else:
            window.add_range(first, last)
        seen.update(range(first, last + 1))
        top = max(top, last)


def test_a_jump_beyond_the_window_forgets_the_old_numbers() -> None:
    window = SeqWindow()
    window.add_range(0, 100)
    assert 50 in window
    window.add(100 + SeqWindow.SIZE + 7)
    assert 50 not in window and 100 + SeqWindow.SIZE + 7 in window
