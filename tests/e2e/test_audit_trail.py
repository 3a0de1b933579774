"""The audit trail on a real two-node cluster: what people do on node A is on node B's
audit with A's node id and their address, every node's chain verifies on both, and what
an attacker on one node can do to its copy (edit a row, rewrite a tail consistently,
publish a forged entry with that node's own bus identity) is shown as tampering."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts import subjects
from contracts.v1.audit import AuditHead, seal
from contracts.v1.events import AuditRecorded
from tests.support import browser
from tests.support.cluster import eventually, record_call, start_pair
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.screens import shot
from tests.support.weblogin import basic_headers

pytestmark = pytest.mark.e2e

STRANGER = "127.0.0.2"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a, b, _ = start_pair(tmp_path)
    try:
        yield a, b
    finally:
        b.kill()
        a.kill()


def entries(on: Node, **params: str) -> list[dict[str, Any]]:
    with on.client() as client:
        response = client.get("/api/audit", params={"limit": "500", **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def verdicts(node: Node) -> dict[str, dict[str, Any]]:
    with node.client() as client:
        response = client.get("/api/audit/verify")
    assert response.status_code == 200, response.text
    return {chain["node_id"]: chain for chain in response.json()["chains"]}


def all_verified(node: Node, chains: set[str]) -> dict[str, dict[str, Any]] | None:
    """Every chain verified, up to the very head its node announces (not an older one)."""
    found = verdicts(node)
    ok = chains <= set(found) and all(
        found[c]["status"] == "verified"
        and found[c]["announced"]["seq"] == found[c]["verified_seq"] for c in chains)
    return found if ok else None


def chain_row(db_path: Path, chain: str, seq: int) -> dict[str, Any]:
    with sqlite3.connect(db_path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM audit WHERE chain = ? AND seq = ?", (chain, seq)).fetchone()
    return dict(row)


def test_actions_on_a_are_audited_on_b_and_tampering_shows(pair: tuple[Node, Node]) -> None:
    a, b = pair
    recording_id = record_call(a, "7000001")

    # What people do on A: a search, a play, a download; a stranger's failed login.
    with a.client() as admin:
        assert admin.get("/api/recordings", params={"number": "1001"}).status_code == 200
        audio = admin.get(f"/api/recordings/{recording_id}/audio")
        assert audio.status_code == 200 and audio.content[:4] == b"OggS"
        wav = admin.get(f"/api/recordings/{recording_id}/audio",
                        params={"format": "wav", "download": "true"})
        assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
        created = admin.post("/api/users", json={"username": "agent7", "password": "agent7-pw",
                                                 "extensions": ["1007"]})
        assert created.status_code in (200, 201), created.text
    stranger = httpx.Client(base_url=a.base_url, auth=("admin", "guess"), timeout=10,
                            transport=httpx.HTTPTransport(local_address=STRANGER))
    with stranger:
        assert stranger.get("/api/recordings").status_code == 401

    # A stranger's flood of bad logins cannot fill the disk: a few entries, the rest
    # counted into one aggregate a minute (login throttling answers 429 soon anyway).
    flooder = httpx.Client(base_url=a.base_url, timeout=10,
                           transport=httpx.HTTPTransport(local_address=STRANGER))
    with flooder:
        codes = {flooder.get("/api/recordings", auth=("admin", f"guess{i}")).status_code
                 for i in range(300)}
    assert codes <= {401, 429}
    from_stranger = [e for e in entries(a, node="a") if e["source_address"] == STRANGER]
    assert len(from_stranger) <= 5, from_stranger
    assert a.metric("callrec_web_audit_aggregated_total") >= 290

    # A plain user may not see the audit, on either node.
    for node in (a, b):
        with node.client("agent7", "agent7-pw") as agent:
            for path in ("/audit", "/api/audit", "/api/audit.csv", "/api/audit/verify"):
                assert eventually(lambda agent=agent, path=path:  # type: ignore[misc]
                                  agent.get(path).status_code in (403,) or None,
                                  15, f"403 for {path}")

    # All of it on B, with A's node id and the caller's address.
    def on_b() -> list[dict[str, Any]] | None:
        found = entries(b, node="a")
        actions = {(e["action"], e["source_address"]) for e in found}
        wanted = {("login", "127.0.0.1"), ("search", "127.0.0.1"), ("play", "127.0.0.1"),
                  ("download", "127.0.0.1"), ("user_change", "127.0.0.1"),
                  ("login_failed", STRANGER)}
        return found if wanted <= actions else None

    found = eventually(on_b, 20, "A's entries on B")
    play = next(e for e in found if e["action"] == "play")
    assert play["actor"] == "admin" and play["target"] == recording_id and play["node"] == "a"
    download = next(e for e in found if e["action"] == "download")
    assert download["detail"] == {"format": "wav", "download": "true"}
    searches = [e["detail"] for e in found if e["action"] == "search"]
    assert {"number": "1001"} in searches  # (the others: record_call's listings)
    assert any(e["actor"] == "admin" and e["outcome"] == "failed"
               for e in found if e["action"] == "login_failed")

    # Every chain verifies on both nodes, against the head each node announces.
    for node in (a, b):
        result = eventually(lambda node=node: all_verified(node, {"a", "b"}),  # type: ignore[misc]
                            20, f"chains verified on {node.node_id}")
        assert result["a"]["verified_seq"] >= 6

    # CSV export on B has A's rows.
    with b.client() as client:
        exported = client.get("/api/audit.csv", params={"node": "a"})
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {"login", "search", "play", "download"} <= {r["action"] for r in rows}
    assert all(r["node"] == "a" for r in rows)

    screenshot(b, "audit")

    db_path = b.data_dir / "web" / "audit.sqlite"
    assert db_path.stat().st_mode & 0o777 == 0o600

    # 1. An edited row in B's copy of A's chain: broken there, at that seq; A's copy fine.
    original = chain_row(db_path, "a", 2)
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET actor = 'someone-else' WHERE chain = 'a' AND seq = 2")
    broken = eventually(lambda: (v := verdicts(b)["a"])["status"] == "broken" and v, 10,
                        "edited row found")
    assert broken["broken_seq"] == 2 and "edited" in broken["problems"][0]
    assert verdicts(a)["a"]["status"] == "verified"
    screenshot(b, "audit-tampered")
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET actor = ? WHERE chain = 'a' AND seq = 2",
                   (original["actor"],))
    eventually(lambda: verdicts(b)["a"]["status"] == "verified", 10, "restored row verifies")

    # 2. The newest entry of A's chain rewritten with a recomputed hash: every link in
    #    B's copy holds, but A's heartbeat announces another head.
    head = verdicts(b)["a"]["head"]
    last = chain_row(db_path, "a", head["seq"])
    fake = seal(AuditHead(seq=head["seq"] - 1, hash=last["prev_hash"]), node_id="a",
                at=datetime.fromisoformat(last["at"]), action=last["action"], actor="nobody",
                target=last["target"], source_address=last["source_address"],
                outcome=last["outcome"], detail=json.loads(last["detail"]),
                event_id=last["event_id"])
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET actor = ?, hash = ? WHERE chain = 'a' AND seq = ?",
                   (fake.actor, fake.hash, head["seq"]))
    mismatch = eventually(lambda: (v := verdicts(b)["a"])["status"] == "head_mismatch" and v,
                          10, "rewritten head found")
    assert mismatch["announced"]["hash"] == last["hash"]
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE audit SET actor = ?, hash = ? WHERE chain = 'a' AND seq = ?",
                   (last["actor"], last["hash"], head["seq"]))

    # 3. B's own web identity forges an entry claiming to be A's: it cannot publish on
    #    A's subjects, and what it can publish lands in B's chain, shown as forged there
    #    on both nodes, never in A's.
    asyncio.run(forge(b))
    for node in (a, b):
        result = eventually(
            lambda node=node: (v := verdicts(node))["b"]["status"] == "broken" and v,  # type: ignore[misc]
            20, f"forged entry shown on {node.node_id}")
        assert "forged" in " ".join(result["b"]["problems"])
        assert result["a"]["status"] == "verified"


async def forge(node: Node) -> None:
    nc = await node.bus("web")
    try:
        js = nc.jetstream()
        fake = seal(AuditHead(seq=10_000, hash="f" * 64), node_id="a", at=datetime.now(UTC),
                    action="delete", actor="admin", target="nothing")
        data = fake.model_dump_json().encode()
        with pytest.raises(Exception):  # noqa: B017  (the server refuses: no ack comes)
            await js.publish(subjects.event("a", "audit.recorded"), data, timeout=2)
        ack = await js.publish(subjects.event(node.node_id, "audit.recorded"), data, timeout=5)
        assert ack.seq > 0
        assert AuditRecorded.model_validate_json(data).node_id == "a"
    finally:
        await nc.close()


def screenshot(node: Node, name: str) -> None:
    if browser.missing():
        return
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD),
                viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{node.base_url}/audit")
            page.locator('[data-testid="verify-row"][data-node="a"]').wait_for()
            page.locator('[data-testid="audit-row"]').first.wait_for()
            assert page.get_by_test_id("load-error").text_content() == ""
            shot(page, name)
        finally:
            chromium.close()
