"""Recordings search benchmark: the catalog with 1,000,000 recordings, filtered by a date
range and a number, for an admin and for a supervisor of a 100-member group.

Why: the issue's target is "the recordings page filtered by a date range and a number
answers in under 100 ms (p95) on this machine" with a million recordings. The catalog
is built directly with the `Catalog` class (its own `apply_batch`, the path replay
takes) in a temporary directory: a year of realistic completions (2 channels, an agent
extension or its E.164 form, a customer number and name, some tags and notes). Then
each query kind runs with fresh random parameters (another day, another number) and
its latencies are printed next to a baseline measured in the same run: the unfiltered
newest-50 page, what the page shows first. Run from the repository root:

    .venv/bin/python -m bench.search                 # 1,000,000 rows (~10 min to build)
    .venv/bin/python -m bench.search --rows 20000    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contracts.v1.events import (  # noqa: E402
    ChannelSummary,
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingTagChanged,
)
from contracts.v1.numbers import NumberPlan  # noqa: E402
from contracts.v1.rpc import SearchRequest  # noqa: E402
from services.catalog.projection import Catalog  # noqa: E402

PLAN_RULES = ("+49301234XXXX/4",)
"""The bench site's number plan: agents' DIDs +49 30 1234 2000..3999 are extensions."""
EXTENSIONS = [str(n) for n in range(2000, 4000)]
FIRST = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannah", "Ilse", "Jonas",
         "Karl", "Lena", "Marie", "Noah", "Olga", "Paul", "Rita", "Sven", "Tom", "Ute"]
LAST = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
        "Schulz", "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Neumann", "Braun"]
TAGS = ["complaint", "vip", "sale", "follow-up", "escalated"]
WORDS = ["invoice", "refund", "contract", "cancel", "address", "delivery", "late", "angry",
         "upgrade", "tariff", "callback", "resolved", "manager", "discount", "payment"]
DAYS = 365


@dataclass(frozen=True)
class Site:
    """What the generated history is about: when it ends, who the customers are."""

    end: datetime
    customers: list[tuple[str, str]]  # (E.164 number, name)


def make_site(rng: random.Random) -> Site:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    customers = [(f"+49{rng.randint(150, 179)}{rng.randint(1_000_000, 9_999_999)}",
                  f"{rng.choice(FIRST)} {rng.choice(LAST)}") for _ in range(200_000)]
    return Site(end, customers)


def recording(rng: random.Random, site: Site, index: int) -> RecordingCompleted:
    day = rng.randrange(DAYS)
    started = site.end - timedelta(days=day + 1, seconds=-rng.randint(7 * 3600, 19 * 3600))
    seconds = max(5, int(rng.expovariate(1 / 240)))
    extension = rng.choice(EXTENSIONS)
    # Half the PBXs send the agent's DID (SIPREC), half the bare extension (CUCM).
    near = f"+49301234{extension}" if index % 2 else extension
    customer, name = rng.choice(site.customers)
    direction = rng.choice(("inbound", "inbound", "outbound", "internal"))
    if direction == "internal":
        customer, name = rng.choice(EXTENSIONS), f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    rid = f"{index:08x}{rng.getrandbits(96):024x}"
    channels = [ChannelSummary(channel=c, stream_id=f"s{c}", port=20000 + 2 * c,
                               packets_received=seconds * 50, codecs=["PCMA"],
                               packets_decoded=seconds * 50) for c in (0, 1)]
    return RecordingCompleted.model_construct(
        event_id=rid, node_id=("a", "b")[index % 2], occurred_at=started,
        type="recording.completed", recording_id=rid, started_at=started,
        ended_at=started + timedelta(seconds=seconds), duration_ms=seconds * 1000,
        object_key=f"recordings/{started:%Y/%m/%d}/{rid}.opus", content_type="audio/ogg",
        size_bytes=seconds * 2000, sha256="0" * 64, channels=channels, recovered=False,
        interrupted=index % 997 == 0,
        metadata=RecordingMetadata(
            source="siprec" if index % 2 else "cucm", session_key=rid, direction=direction,
            participants=[Participant(role="near", number=near, name=f"Agent {extension}",
                                      channel=0),
                          Participant(role="far", number=customer, name=name, channel=1)]),
    )


def annotations(rng: random.Random, event: RecordingCompleted) -> Iterator[Any]:
    """About 5 % of the recordings get a tag, 2 % a note."""
    if rng.random() < 0.05:
        yield RecordingTagChanged(node_id="a", recording_id=event.recording_id,
                                  tag=rng.choice(TAGS), added=True, changed_by="sup",
                                  occurred_at=event.ended_at)
    if rng.random() < 0.02:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        yield RecordingNoteAdded(node_id="a", recording_id=event.recording_id, text=text,
                                 author="sup", occurred_at=event.ended_at)


def build(path: Path, rows: int, rng: random.Random, site: Site,
          batch: int = 5000) -> tuple[Catalog, float]:
    catalog = Catalog(path, NumberPlan.parse(PLAN_RULES))
    started = time.monotonic()
    seq = 0
    done = 0
    while done < rows:
        items: list[tuple[Any, int]] = []
        for index in range(done, min(rows, done + batch)):
            event = recording(rng, site, index)
            seq += 1
            items.append((event, seq))
            for extra in annotations(rng, event):
                seq += 1
                items.append((extra, seq))
        catalog.apply_batch(items)
        done = min(rows, done + batch)
        if done % 100_000 == 0:
            print(f"  {done:,} recordings ({time.monotonic() - started:.0f} s)", flush=True)
    return catalog, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Figures:
    name: str
    millis: list[float]
    hits: list[int]

    def row(self, baseline: float) -> str:
        p50, p95, p99 = (percentile(self.millis, q) for q in (0.5, 0.95, 0.99))
        mean_hits = sum(self.hits) / len(self.hits)
        return (f"  {self.name:<44} {p50:7.1f} {p95:7.1f} {p99:7.1f} {max(self.millis):7.1f}"
                f"  x{p95 / baseline if baseline else 0:5.1f}  {mean_hits:9.0f}")


def measure(name: str, catalog: Catalog, runs: int,
            make: Callable[[], tuple[SearchRequest, list[str] | None]]) -> Figures:
    millis: list[float] = []
    hits: list[int] = []
    for _ in range(runs):
        request, visible = make()
        began = time.perf_counter()
        result = catalog.search(request, visible)
        millis.append((time.perf_counter() - began) * 1000)
        hits.append(result.total)
    return Figures(name, millis, hits)


@dataclass(frozen=True)
class Sample:
    """A recording that exists: searches look for it, as a person would look for a call."""

    started: datetime
    extension: str
    customer: str


def samples(path: Path, rng: random.Random, count: int) -> list[Sample]:
    """Random recordings read back from the catalog file (works on a kept one too)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        top = int(db.execute("SELECT MAX(rid) FROM recording_events").fetchone()[0])
        found: list[Sample] = []
        while len(found) < count:
            row = db.execute("SELECT event_json FROM recording_events WHERE rid = ?",
                             (rng.randint(1, top),)).fetchone()
            if row is None:
                continue
            event = RecordingCompleted.model_validate_json(row[0])
            near, far = event.metadata.participants[:2]
            found.append(Sample(event.started_at, (near.number or "")[-4:], far.number or ""))
        return found
    finally:
        db.close()


def day_range(started: datetime, days: int) -> tuple[datetime, datetime]:
    """The local days (Berlin, UTC+1) ending with the recording's, as the page sends
    them: UTC instants."""
    local_midnight = (started + timedelta(hours=1)).replace(
        hour=0, minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return local_midnight - timedelta(days=days - 1), local_midnight + timedelta(days=1)


def run(rows: int, runs: int, seed: int, keep: Path | None,
        http: bool = False) -> list[Figures]:
    rng = random.Random(seed)
    site = make_site(rng)
    root = keep or Path(tempfile.mkdtemp(prefix="callrec-bench-search-"))
    path = root / "catalog.sqlite3"
    existing = Catalog(path, NumberPlan.parse(PLAN_RULES)) if path.exists() else None
    if existing is not None and existing.count >= rows:
        catalog = existing
        print(f"reusing the catalog of {catalog.count:,} recordings in {path}", flush=True)
    else:
        if existing is not None:
            existing.close()
            for old in root.glob("catalog.sqlite3*"):
                old.unlink()
        print(f"building a catalog of {rows:,} recordings in {path}", flush=True)
        catalog, seconds = build(path, rows, rng, site)
        size = sum(p.stat().st_size for p in root.glob("catalog.sqlite3*"))
        print(f"built in {seconds:.0f} s ({rows / seconds:,.0f} recordings/s), "
              f"{size / 2**20:,.0f} MiB on disk", flush=True)
    known = samples(path, rng, 4000)
    group = list(dict.fromkeys(s.extension for s in known))[:100]  # 100-member group
    members = [s for s in known if s.extension in group]
    Make = Callable[[], tuple[SearchRequest, list[str] | None]]

    def query(days: int, pool: list[Sample], filters: Callable[[Sample], dict[str, Any]],
              visible: list[str] | None) -> Make:
        def make() -> tuple[SearchRequest, list[str] | None]:
            sample = rng.choice(pool)
            low, high = day_range(sample.started, days)
            return SearchRequest(start_from=low, start_to=high, **filters(sample)), visible
        return make

    def customer(sample: Sample) -> dict[str, Any]:
        return {"number_or_name": sample.customer}

    def extension(sample: Sample) -> dict[str, Any]:
        return {"number_or_name": sample.extension}

    baseline = measure("baseline: newest 50, no filter (admin)", catalog, runs,
                       lambda: (SearchRequest(), None))
    figures = [
        baseline,
        measure("admin: 1 day + customer number", catalog, runs,
                query(1, known, customer, None)),
        measure("admin: 7 days + extension", catalog, runs,
                query(7, known, extension, None)),
        measure("admin: 30 days + customer number", catalog, runs,
                query(30, known, customer, None)),
        measure("admin: 1 day + number (old `number`)", catalog, runs,
                query(1, known, lambda s: {"number": s.customer}, None)),
        measure("supervisor(100): 1 day + customer number", catalog, runs,
                query(1, members, customer, group)),
        measure("supervisor(100): 7 days + member extension", catalog, runs,
                query(7, members, extension, group)),
        measure("supervisor(100): 30 days + customer number", catalog, runs,
                query(30, members, customer, group)),
        measure("supervisor(100): 7 days, no other filter", catalog, runs,
                query(7, members, lambda s: {}, group)),
        measure("supervisor(100): newest 50, no filter", catalog, max(5, runs // 10),
                lambda: (SearchRequest(), group)),
        measure("admin: 7 days + text in notes", catalog, runs,
                query(7, known, lambda s: {"note_text": rng.choice(WORDS)}, None)),
        measure("admin: 7 days + tag", catalog, runs,
                query(7, known, lambda s: {"tag": rng.choice(TAGS)}, None)),
        measure("admin: all time + customer number", catalog, max(5, runs // 10),
                lambda: (SearchRequest(number_or_name=rng.choice(known).customer), None)),
    ]
    catalog.close()
    report(f"{rows:,} recordings in the catalog (Catalog.search, in process)", runs, figures)
    if http:
        report(f"{rows:,} recordings through the web (GET /api/recordings on a real node)",
               runs, measure_http(path, runs, rng, known, members, group))
    return figures


def report(title: str, runs: int, figures: list[Figures]) -> None:
    base = percentile(figures[0].millis, 0.95)
    print(f"\n{title}, {runs} searches each (a fresh day/number per search)")
    print(f"  {'ms per search':<44} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
          f"  {'p95/base':>6}  {'mean hits':>9}")
    for figure in figures:
        print(figure.row(base))


def measure_http(path: Path, runs: int, rng: random.Random, known: list[Sample],
                 members: list[Sample], group: list[str]) -> list[Figures]:
    """The same searches as a browser's page makes them: a real node (`callrec up`, the
    catalog file copied into its data directory, so nothing is replayed) answering
    `GET /api/recordings` over HTTP, as the admin and as a user whose 100 extensions are
    what a supervisor of a 100-member group sees."""
    import shutil

    import httpx

    from tests.support.node import ADMIN_PASSWORD, Node

    root = Path(tempfile.mkdtemp(prefix="callrec-bench-search-node-"))
    target = root / "node" / "catalog" / "catalog.sqlite3"
    target.parent.mkdir(parents=True)
    shutil.copyfile(path, target)
    node = Node(root / "node", extra_args=["--number-plan", *PLAN_RULES])
    try:
        node.start(timeout=300)
        extension_args = [arg for ext in group for arg in ("--extension", ext)]
        node.cli("users", "add", "sup", "--password", "sup-bench-secret", *extension_args)
        admin = httpx.Client(base_url=node.base_url, auth=("admin", ADMIN_PASSWORD),
                             timeout=30)
        sup = httpx.Client(base_url=node.base_url, auth=("sup", "sup-bench-secret"),
                           timeout=30)
        deadline = time.monotonic() + 30
        while sup.get("/api/recordings", params={"limit": 1}).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the bench user never became usable")
            time.sleep(0.2)

        def timed(name: str, client: httpx.Client, pool: list[Sample], days: int | None,
                  filters: Callable[[Sample], dict[str, str]]) -> Figures:
            millis: list[float] = []
            hits: list[int] = []
            for _ in range(runs):
                sample = rng.choice(pool)
                params = filters(sample)
                if days is not None:
                    low, high = day_range(sample.started, days)
                    params.update({"from": low.isoformat(), "to": high.isoformat()})
                began = time.perf_counter()
                response = client.get("/api/recordings", params=params)
                millis.append((time.perf_counter() - began) * 1000)
                response.raise_for_status()
                hits.append(int(response.json()["total"]))
            return Figures(name, millis, hits)

        def customer(s: Sample) -> dict[str, str]:
            return {"number_or_name": s.customer}

        def extension(s: Sample) -> dict[str, str]:
            return {"number_or_name": s.extension}

        return [
            timed("baseline: newest 50, no filter (admin)", admin, known, None, lambda s: {}),
            timed("admin: 1 day + customer number", admin, known, 1, customer),
            timed("admin: 7 days + extension", admin, known, 7, extension),
            timed("admin: 30 days + customer number", admin, known, 30, customer),
            timed("supervisor(100): 1 day + customer number", sup, members, 1, customer),
            timed("supervisor(100): 7 days + member extension", sup, members, 7, extension),
            timed("supervisor(100): 30 days + customer number", sup, members, 30, customer),
        ]
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200, help="searches per query kind")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--http", action="store_true",
                        help="also through the web API of a real node (`callrec up`)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the catalog in this directory and keep it (a kept "
                             "catalog with enough rows is reused)")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    run(args.rows, args.runs, args.seed, args.keep, http=args.http)


if __name__ == "__main__":
    main()
