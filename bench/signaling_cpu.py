"""Signaling's CPU per CUCM INVITE leg, in process (no SIPp, no NATS, no node).

Why: at 400 INVITE legs/s (200 recorded calls/s) signaling's own CPU per leg decides
whether one Python process keeps up on two cores shared with capture and finalize.
bench/setup_rate.py measures the whole node end to end, noisily; this drives the real
RecorderUas with the CUCM delayed-offer legs of tests/sipp/cucm_bulk.xml (INVITE
without SDP, our 200 with the offer, the ACK with the answer, later the BYE) and counts
process CPU per leg. The capture RPCs cost what bus.call costs on our side (the
request's JSON, the reply's parse and validation), not NATS's own client work.
Logging is set up as in production (JSON lines to a descriptor, here /dev/null), and
so is the dialog journal (a temporary directory).

    python -m bench.signaling_cpu                      # this tree, ~10 s
    python -m bench.signaling_cpu --baseline-tree DIR  # A/B against another checkout,
                                                       # interleaved rounds, ratio printed
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CUCM_FROM = ("<sip:1001@10.1.1.1;x-{side};x-refci=7{call};x-nearendclusterid=StandAloneCluster;"
             "x-nearenddevice=SEP001122334455;x-nearendaddr=1001;x-farendrefci=0;"
             "x-farendclusterid=StandAloneCluster;x-farenddevice=SEP665544332211;"
             "x-farendaddr=2002>;tag=4242SIPpTag00{call}")

INVITE = (
    "INVITE sip:9999@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}-{side}-1\r\n"
    "From: {from_}\r\n"
    "To: <sip:9999@127.0.0.1>\r\n"
    "Call-ID: {call}-{side}@127.0.0.1\r\n"
    "CSeq: 101 INVITE\r\n"
    "Max-Forwards: 70\r\n"
    "User-Agent: Cisco-CUCM14.0\r\n"
    "Session-Expires: 1800\r\n"
    "Min-SE: 1800\r\n"
    "Supported: timer,resource-priority,replaces,X-cisco-srtp-fallback\r\n"
    "Allow: INVITE, OPTIONS, INFO, BYE, CANCEL, ACK, PRACK, UPDATE, REFER, SUBSCRIBE, NOTIFY\r\n"
    "Allow-Events: presence, kpml\r\n"
    "Contact: <sip:1001@127.0.0.1:{port};transport=UDP>;isFocus\r\n"
    "Content-Length: 0\r\n\r\n"
)

ANSWER = (
    "v=0\r\no=CiscoSystemsCCM-SIP 4242 1 IN IP4 127.0.0.1\r\ns=SIP Call\r\n"
    "c=IN IP4 127.0.0.1\r\nb=TIAS:64000\r\nb=AS:64\r\nt=0 0\r\n"
    "m=audio {media} RTP/AVP 0 101\r\na=ptime:20\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendonly\r\n"
)

IN_DIALOG = (
    "{method} sip:callrec@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}-{side}-{n}\r\n"
    "From: {from_}\r\n"
    "To: <sip:9999@127.0.0.1>;tag={to_tag}\r\n"
    "Call-ID: {call}-{side}@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Max-Forwards: 70\r\n"
    "User-Agent: Cisco-CUCM14.0\r\n"
    "{content_type}"
    "Content-Length: {length}\r\n\r\n{body}"
)


def run_rounds(legs_per_round: int, rounds: int, live: int = 0) -> list[float]:
    """CPU-µs per leg of each round (INVITE+200, ACK, BYE+200 of every leg)."""
    # Imported here: a --baseline-tree run imports them from that tree.
    from callrec import logs
    from callrec.users import UsersProjection
    from contracts.v1.rpc import AllocateReply, AllocateRequest, UpdateRequest
    from services.signaling.recorder import RecordingSession
    from services.signaling.sessions import DialogStore
    from services.signaling.sip.message import SipResponse, parse_message
    from services.signaling.sip.transport import Peer
    from services.signaling.uas import RecorderUas

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # production logs go to stderr: here to /dev/null, same path
    logs.setup_logging("signaling", "bench", "info")

    ports = itertools.count(20000, 2)

    class Backend:
        """bus.call's cost on our side: the request's JSON out, the reply parsed in."""

        users = UsersProjection()

        def can_record(self) -> tuple[bool, str | None]:
            return True, None

        def over_capacity(self) -> str | None:
            return None

        def reserved_ports(self, count: int) -> tuple[str, list[int]] | None:
            return None  # every leg allocates first: the same messages, in another order

        async def allocate(self, request: AllocateRequest) -> dict[str, int]:
            request.model_dump_json().encode()
            reply = json.dumps({"ok": True, "data": {"ports": {
                s.stream_id: next(ports) for s in request.streams}}}).encode()
            return AllocateReply.model_validate(json.loads(reply)["data"]).ports

        async def update(self, request: UpdateRequest) -> None:
            request.model_dump_json().encode()
            json.loads(b'{"ok": true, "data": null}')

        async def release(self, recording_id: str, stream_id: str) -> None:
            pass

        async def finalize(self, recording_id: str, ended_at: datetime, metadata: object
                           ) -> None:
            pass

        async def recording_started(self, session: RecordingSession) -> None:
            pass

        async def recording_ended(self, session: RecordingSession, reason: str) -> None:
            pass

        async def participants_changed(self, session: RecordingSession, at: datetime
                                       ) -> None:
            pass

        def quiet_streams(self) -> None:
            return None

    class Sender:
        def __init__(self) -> None:
            self.last: dict[str, bytes] = {}

        def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None:
            self.last["reply"] = data

        def send_request(self, peer: Peer, data: bytes) -> None:
            pass

    try:  # the services' collector policy, where the tree under test has it
        from callrec.gcpolicy import tune_gc
    except ImportError:
        try:  # before it was shared: signaling's own
            from services.signaling.gcpolicy import tune_gc
        except ImportError:
            tune_gc = None
    if tune_gc is not None:
        tune_gc()

    # The dialog journal as in production (a line per INVITE and ACK), on local disk.
    journal_dir = tempfile.mkdtemp(prefix="callrec-bench-dialogs-")

    async def main() -> list[float]:
        sender = Sender()
        uas = RecorderUas(backend=Backend(), sender=sender, address="127.0.0.1",
                          sip_port=5060, record_all=True, max_channels=1_000_000,
                          dialog_store=DialogStore(Path(journal_dir), "bench"))
        peer = Peer("UDP", "127.0.0.1", 5061)
        call_numbers = itertools.count(1)
        results = []

        async def settle() -> None:
            while uas.tasks:
                await asyncio.gather(*list(uas.tasks))

        async def timed(messages: list[bytes]) -> float:
            """CPU-s to take these messages in and finish everything they started."""
            start = time.process_time()
            for data in messages:
                uas.on_message(data, peer)
            await settle()
            return time.process_time() - start

        async def round_of(count: int, *, timed_round: bool = True) -> float:
            """CPU-µs per leg of `count` legs; an untimed round leaves its calls up."""
            calls = [next(call_numbers) for _ in range(count // 2)]
            legs = [(c, side, CUCM_FROM.format(side=side, call=c))
                    for c in calls for side in ("nearend", "farend")]
            invites = [INVITE.format(port=5061, call=call, side=side, from_=from_).encode()
                       for call, side, from_ in legs]
            cpu = await timed(invites)
            # Untimed: our tags (from the dialogs) into the ACKs and BYEs.
            tags = {call_id: tag for call_id, tag in uas.dialogs}
            acks, byes = [], []
            for call, side, from_ in legs:
                to_tag = tags.get(f"{call}-{side}@127.0.0.1", "")
                body = ANSWER.format(media=30000 + call % 20000)
                acks.append(IN_DIALOG.format(
                    method="ACK", port=5061, call=call, side=side, n=1, from_=from_,
                    to_tag=to_tag, cseq=101, content_type="Content-Type: application/sdp\r\n",
                    length=len(body), body=body).encode())
                byes.append(IN_DIALOG.format(
                    method="BYE", port=5061, call=call, side=side, n=2, from_=from_,
                    to_tag=to_tag, cseq=102, content_type="", length=0, body="").encode())
            cpu += await timed(acks)
            # Checked after the clock stops: every leg answered.
            unanswered = sum(1 for call, side, _ in legs if f"{call}-{side}@127.0.0.1" not in tags)
            if unanswered:
                raise RuntimeError(f"{unanswered} legs unanswered")
            if not timed_round:
                return 0.0
            cpu += await timed(byes)
            last = parse_message(sender.last["reply"])  # the last BYE got its 200
            assert isinstance(last, SipResponse) and last.status == 200
            return cpu / len(legs) * 1e6

        # Calls in progress, as in a node mid-burst (their objects are what the cycle
        # collector walks on its older generations), then the measured rounds.
        await round_of(live, timed_round=False)
        for _ in range(rounds + 1):  # the first round warms up
            results.append(await round_of(legs_per_round))
        uas.transactions.shutdown()
        return results[1:]

    try:
        return asyncio.run(main())
    finally:
        shutil.rmtree(journal_dir, ignore_errors=True)


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--legs", type=int, default=400, help="legs per round (a second's worth)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--live", type=int, default=0,
                        help="legs answered (not ended) before the rounds: calls in progress")
    parser.add_argument("--baseline-tree", type=Path,
                        help="another checkout: interleaved runs of both, ratio printed")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved runs per tree")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_tree is None:
        figures = run_rounds(args.legs, args.rounds, args.live)
        if args.json:
            print(json.dumps(figures), file=sys.__stdout__)
            return
        print(f"CPU per leg (µs), {args.rounds} rounds of {args.legs} legs "
              f"({args.live} legs up): "
              + ", ".join(f"{f:.0f}" for f in figures)
              + f"; median {statistics.median(figures):.0f}")
        return
    here: list[float] = []
    there: list[float] = []
    for _ in range(args.pairs):
        for tree, into in ((args.baseline_tree, there), (REPO, here)):
            out = subprocess.run(
                [sys.executable, str(REPO / "bench" / "signaling_cpu.py"), "--json",
                 "--legs", str(args.legs), "--rounds", str(args.rounds),
                 "--live", str(args.live)],
                cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                check=True, capture_output=True, text=True)
            into.extend(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| tree | CPU µs per leg, median of {len(here)} rounds | min | max |")
    print("|---|---:|---:|---:|")
    for name, figures in (("baseline", there), ("this", here)):
        print(f"| {name} | {statistics.median(figures):.0f} | {min(figures):.0f} | "
              f"{max(figures):.0f} |")
    print(f"\nthis / baseline: {median_ratio(here, there):.2f} (medians, interleaved "
          f"runs of {args.rounds} x {args.legs} legs each)")


if __name__ == "__main__":
    main()
