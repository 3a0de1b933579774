"""BYE->playable with calls in progress: a steady `N` concurrent calls, ending one by one.

Why: bench.capacity ends every call of a level at the same instant, the worst burst a
node can meet (and a useful stress figure), but then no call is in progress while the
recordings finalize. A contact centre at N concurrent calls sees calls end one at a
time while N others go on; this measures that case.

Each of N slots holds a first call from the start; the first calls end one by one,
evenly over the second half of `--seconds`, and each is replaced at its end by a new
call in the same slot, set up then (capture's allocate, on new ports), so N calls are
in progress at every measured BYE and set-up goes on while recordings finalize.
The measured figure is, for each first call, its finalize request
(the BYE, sent after one flush interval as bench.capacity does) until the recording is
playable on the recording node and on its peer, by each node's log as in
bench.capacity (`playable_from_log`); a recording counts once a listing poll, every
`PLAYABLE_POLL_S`, also found it listed with its whole file in the store. The second
calls then end together and are checked, not measured.

    python -m bench.churn --calls 400 --seconds 20      # about 2 minutes
    python -m bench.churn --calls 3 --seconds 4          # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen  # noqa: E402
from bench.capacity import (  # noqa: E402
    PLAYABLE_POLL_S,
    check_tones,
    commit,
    fmt,
    machine,
    percentile,
    playable_by_logs,
    spread,
    watch_playable,
)
from bench.capture_load import FLUSH_WAIT_S, CaptureDriver, catalog_items, running_node  # noqa: E402
from bench.setup_rate import LAG_METRIC  # noqa: E402


@dataclass
class Plan:
    """When each slot's first call ends (its second begins), in the sender's 20 ms ticks."""

    calls: int
    ticks: int  # a whole call: the second calls last this long

    def first_end(self, slot: int) -> int:
        """The first calls end evenly over the second half of a call's length."""
        half = self.ticks // 2
        return half + (half * slot) // max(1, self.calls)

    def first_windows(self) -> list[tuple[int, int]]:
        """The first calls' sender windows, two ports per call."""
        return [w for slot in range(self.calls) for w in [(0, self.first_end(slot))] * 2]

    def total_ticks(self) -> int:
        return self.first_end(self.calls - 1) + self.ticks + 10 * START_AHEAD_TICKS


START_AHEAD_TICKS = 5  # a new call's media begins 100 ms after its allocate is asked


@dataclass
class ChurnResult:
    calls: int
    seconds: float
    here: list[float]
    there: list[float]
    done: list[float]
    loss_pct: float
    sender: str
    correct: str
    wrong: int
    peer: bool
    lag: str = "not sampled"
    polled: str = "no poll"

    def table(self) -> str:
        def p(values: list[float], q: float) -> str:
            return fmt(percentile(values, q), 2) if len(values) == self.calls else "n/a"

        return (
            "| concurrent calls | BYEs measured | loss % | BYE->done p50 / p99 s "
            "| BYE->playable p50 / p99 s | on peer p50 / p99 s | correct |\n"
            "|---:|---:|---:|---|---|---|---|\n"
            f"| {self.calls} | {len(self.here)} | {fmt(self.loss_pct)} "
            f"| {p(self.done, 50)} / {p(self.done, 99)} | {p(self.here, 50)} / "
            f"{p(self.here, 99)} | "
            + (f"{p(self.there, 50)} / {p(self.there, 99)}" if self.peer else "n/a")
            + f" | {self.correct} |"
        )


async def _churn(driver: CaptureDriver, plan: Plan, t0: float, first_ids: list[str],
                 tag: str, more: asyncio.Queue[tuple[list[int], int, int] | None],
                 ) -> list[str]:
    """At each first call's end: set up its slot's new call (allocate, then its media
    from START_AHEAD_TICKS later) and, one flush interval after its last packet, send
    the first call's BYE (a finalize request). Returns the new calls' ids."""
    events: list[tuple[float, int, int]] = []  # (when, 0 set up / 1 BYE, slot)
    for slot in range(plan.calls):
        end_at = t0 + plan.first_end(slot) * loadgen.PTIME
        events += [(end_at - START_AHEAD_TICKS * loadgen.PTIME, 0, slot),
                   (end_at + FLUSH_WAIT_S, 1, slot)]
    second: list[str] = []
    for when, kind, slot in sorted(events):
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        if kind == 1:
            await driver.request_finalize(first_ids[slot])
            continue
        ids, ports = await driver.allocate(1, f"{tag}-b{slot:05d}")
        second += ids
        start = max(plan.first_end(slot),
                    round((time.monotonic() - t0) / loadgen.PTIME) + START_AHEAD_TICKS)
        await more.put((ports, start, start + plan.ticks))
    await more.put(None)
    return second


async def run(calls: int, seconds: float, samples: int, keep: bool,
              with_peer: bool) -> ChurnResult:
    plan = Plan(calls, round(seconds / loadgen.PTIME))
    peers: list[Any] | None = [] if with_peer else None
    async with running_node(2 * calls, keep, peers) as (node, driver, _):
        peer = peers[0] if peers else None
        tag = f"churn{calls}-{uuid.uuid4().hex[:6]}"
        first_from = datetime.now(UTC)
        first_ids, first_ports = await driver.allocate(calls, f"{tag}-a")
        first_to = datetime.now(UTC)
        started = asyncio.Event()
        more: asyncio.Queue[tuple[list[int], int, int] | None] = asyncio.Queue()
        sending = asyncio.create_task(loadgen.send_load(
            first_ports, plan.total_ticks() * loadgen.PTIME, {}, plan.first_windows(),
            started, more))
        await started.wait()
        lag = loadgen.GaugePeak(node, LAG_METRIC)
        lag.start()
        t0 = time.monotonic() + 0.05  # the sender's first tick (its start line says so)
        # Only the first calls, by their start times, and of those only the ones that
        # ended no sooner than the earliest still pending (each first call lasts longer
        # than the one before): the listing holds what may be new, not all the
        # recordings seen so far (400 of them, 8 times a second across the two nodes,
        # took a tenth of a core of each node's catalog and web from the encoders).
        window = {"from": first_from.isoformat(), "to": first_to.isoformat()}
        sound_s = {rid: plan.first_end(slot) * loadgen.PTIME
                   for slot, rid in enumerate(first_ids)}

        def still_pending(pending: set[str]) -> dict[str, str]:
            shortest = min((sound_s[rid] for rid in pending), default=0.0)
            return {"min_duration_s": str(max(0, int(shortest) - 1))}

        timeout = 2 * seconds + 120
        watches = [asyncio.create_task(watch_playable(n, first_ids, timeout, PLAYABLE_POLL_S,
                                                      params=window, narrow=still_pending))
                   for n in ([node, peer] if peer is not None else [node])]
        second_ids = await _churn(driver, plan, t0, first_ids, tag, more)
        await lag.stop()
        sent = await sending
        await asyncio.sleep(FLUSH_WAIT_S)
        with contextlib.suppress(TimeoutError):
            await driver.finalize(second_ids, timeout=120)
        with contextlib.suppress(TimeoutError):
            await driver.wait_done(first_ids, timeout=60)
        playable = [await w for w in watches]
        ids = first_ids + second_ids
        failed = {rid for rid in ids if driver.done.get(rid) != "completed"}
        items = await catalog_items(node, set(ids) - failed, 60)
        stored = sum(int(c["packets_received"]) for i in items for c in i["channels"])
        two_channels = sum(len(i["channels"]) == 2 for i in items)
        # Tones over each call's own length: first calls differ, second calls last `seconds`.
        sound = dict(sound_s)
        sound.update({rid: seconds for rid in second_ids})
        sample = spread(first_ids, samples) + spread(second_ids, max(1, samples // 2))
        why: list[str] = []
        with tempfile.TemporaryDirectory(prefix="churn-") as workdir:
            tones_ok, checked = await check_tones(node, sample, seconds, Path(workdir), why,
                                                  expected=sound)

        def bye_to(seen: dict[str, float]) -> list[float]:
            return [seen[r] - driver.requested_at[r] for r in first_ids
                    if r in seen and r in driver.requested_at]

        logged, poll_after_log = playable_by_logs(
            [node, peer] if peer is not None else [node], first_ids, playable, driver)
        polled = [bye_to(seen) for seen in playable]
        polled_note = "; ".join(
            f"{where} p50 / p99 {fmt(percentile(times, 50), 3)} / "
            f"{fmt(percentile(times, 99), 3)} s ({len(times)}/{calls})"
            for where, times in zip(("on the recording node", "on the peer"), polled,
                                    strict=False))
        if poll_after_log:
            polled_note += (f"; each poll saw a recording {min(poll_after_log):.3f} to "
                            f"{max(poll_after_log):.3f} s after its log said it was playable")

        done = [driver.done_at[r] - driver.requested_at[r] for r in first_ids
                if r in driver.done_at and r in driver.requested_at]
        wrong = (2 * calls - two_channels) + (checked - tones_ok) + len(failed)
        return ChurnResult(
            calls=calls, seconds=seconds, here=logged[0],
            there=logged[1] if peer is not None else [], done=done,
            loss_pct=100.0 * (1 - stored / sent.sent) if sent.sent else float("nan"),
            sender=f"{sent.rate_pct:.2f} % / {sent.max_lag_ms:.0f} ms",
            correct=(f"{two_channels}/{2 * calls} 2ch, {tones_ok}/{checked} tones, "
                     f"{len(failed)} not completed" + (f" ({'; '.join(why)})" if why else "")),
            wrong=wrong, peer=peer is not None,
            lag=f"peak {lag.peak:.1f} s ({lag.samples} samples, {lag.missed} scrapes without it)",
            polled=polled_note)


def render(result: ChurnResult) -> str:
    return (f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, churn: "
            f"{result.calls} concurrent calls, {result.seconds:g} s calls"
            f"{', with a peer node' if result.peer else ''}\n\nMachine: {machine()}.\n\n"
            + result.table() + "\n\n"
            f"- sender sent % of schedule / worst lag: {result.sender}\n"
            f"- live lag while the first calls played and ended: {result.lag}\n"
            f"- BYE->playable as the listing polls (every {PLAYABLE_POLL_S:g} s) saw it: "
            f"{result.polled}\n"
            "- BYE = capture's finalize request, one flush interval after the call's last "
            "packet; playable = by that node's log, the catalog's `recording_cataloged` "
            "(on the peer also sync's `object_replicated`), counted once a listing poll "
            "also found it listed with its whole file in the node's store. Every measured "
            "BYE happens with the stated number of calls in progress (the ending call's slot "
            "starts a new call at once).\n")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="concurrent calls")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a call")
    parser.add_argument("--samples", type=int, default=6,
                        help="first calls downloaded to check both tones (and half as many "
                             "second calls)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="measure on a second node too (as in production)")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data dirs")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 750:
        parser.error("--calls must be 1..750")  # twice as many are allocated
    if not 2 <= args.seconds <= 600:
        parser.error("--seconds must be within 2..600")
    result = asyncio.run(run(args.calls, args.seconds, args.samples, args.keep, args.peer))
    text = render(result)
    print(text)
    if result.wrong:
        raise SystemExit(f"{result.wrong} wrong recordings")
    return text


if __name__ == "__main__":
    main()
