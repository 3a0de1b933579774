"""The audit chain's canonical form and verification: each tampering a copy can suffer
is tried and must be found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from contracts.v1.audit import (
    EMPTY_HEAD,
    AuditHead,
    canonical_bytes,
    entry_hash,
    head_of,
    seal,
    verify_chain,
)
from contracts.v1.events import AUDIT_GENESIS, AuditRecorded, parse_event

T0 = datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)


def chain(n: int, node: str = "a") -> list[AuditRecorded]:
    entries: list[AuditRecorded] = []
    head = EMPTY_HEAD
    for i in range(n):
        entry = seal(head, node_id=node, at=T0 + timedelta(seconds=i), action="play",
                     actor="alice", target=f"rec{i}", source_address="10.0.0.5",
                     detail={"format": "ogg", "i": i, "download": False})
        entries.append(entry)
        head = head_of(entry)
    return entries


def test_canonical_form_is_stable_and_sorted() -> None:
    entry = chain(1)[0]
    raw = canonical_bytes(entry)
    assert raw.startswith(
        b'{"action":"play","actor":"alice","at":"2026-12-01T09:30:00.123456+00:00"')
    assert b" " not in raw
    assert entry.prev_hash == AUDIT_GENESIS and entry.seq == 1
    assert entry.hash == entry_hash(entry) and len(entry.hash) == 64


def test_hash_survives_the_wire_and_other_time_zones() -> None:
    entry = chain(2)[1]
    back = parse_event(entry.model_dump_json().encode())
    assert isinstance(back, AuditRecorded)
    assert entry_hash(back) == entry.hash
    shifted = back.model_copy(update={"at": back.at.astimezone(timezone(timedelta(hours=5)))})
    assert entry_hash(shifted) == entry.hash  # the same instant, spelled otherwise


def test_every_field_is_covered() -> None:
    entry = chain(1)[0]
    changes: dict[str, object] = {
        "event_id": "f" * 32, "node_id": "b", "seq": 2, "prev_hash": "1" * 64,
        "at": entry.at + timedelta(microseconds=1), "actor": "mallory", "action": "download",
        "target": "other", "source_address": "10.0.0.6", "outcome": "denied",
        "detail": {"format": "wav", "i": 0, "download": False},
    }
    for name, value in changes.items():
        assert entry_hash(entry.model_copy(update={name: value})) != entry.hash, name


def test_intact_chain_verifies_against_its_announced_head() -> None:
    entries = chain(5)
    verdict = verify_chain("a", entries, head_of(entries[-1]))
    assert verdict.status == "verified"
    assert verdict.verified_seq == 5 and verdict.entries == 5 and verdict.problems == []
    # A heartbeat a little older than the copy still confirms it.
    assert verify_chain("a", entries, head_of(entries[2])).status == "verified"
    assert verify_chain("a", entries, None).status == "unconfirmed"
    assert verify_chain("a", [], None).status == "empty"
    assert verify_chain("a", [], EMPTY_HEAD).status == "verified"


def test_edited_entry_is_found() -> None:
    entries = chain(5)
    entries[2] = entries[2].model_copy(update={"actor": "nobody"})
    verdict = verify_chain("a", entries, head_of(entries[-1]))
    assert verdict.status == "broken" and verdict.broken_seq == 3
    assert verdict.verified_seq == 2
    assert "edited" in verdict.problems[0]


def test_edited_entry_with_recomputed_hash_breaks_the_next_link() -> None:
    entries = chain(5)
    edited = entries[2].model_copy(update={"target": "elsewhere"})
    entries[2] = edited.model_copy(update={"hash": entry_hash(edited)})
    verdict = verify_chain("a", entries, head_of(entries[-1]))
    assert verdict.status == "broken" and verdict.broken_seq == 4
    assert "prev_hash" in verdict.problems[0]


def test_removed_entry_is_found() -> None:
    entries = chain(5)
    del entries[1]
    verdict = verify_chain("a", entries, head_of(entries[-1]))
    assert verdict.status == "broken" and verdict.broken_seq == 2
    assert "missing" in verdict.problems[0]


def test_reordered_pair_is_found() -> None:
    entries = chain(5)
    entries[1], entries[2] = entries[2], entries[1]
    verdict = verify_chain("a", entries, head_of(entries[-1]))
    assert verdict.status == "broken" and verdict.broken_seq == 2
    # Renumbering them as well breaks their hashes.
    entries = chain(5)
    second, third = entries[1], entries[2]
    entries[1] = third.model_copy(update={"seq": 2, "prev_hash": second.prev_hash})
    entries[2] = second.model_copy(update={"seq": 3, "prev_hash": third.prev_hash})
    assert verify_chain("a", entries, head_of(chain(5)[-1])).status == "broken"


def test_wrong_head_is_found() -> None:
    entries = chain(5)
    verdict = verify_chain("a", entries, AuditHead(seq=5, hash="0" * 63 + "1"))
    assert verdict.status == "head_mismatch"
    assert verdict.verified_seq == 5


def test_consistently_rewritten_tail_is_caught_by_the_head() -> None:
    """An attacker on one node rewrites the tail and recomputes every hash: each link
    holds, only the head the origin announces shows it."""
    original = chain(5)
    forged = original[:3]
    head = head_of(forged[-1])
    for entry in original[3:]:
        fake = seal(head, node_id="a", at=entry.at, action=entry.action, actor="someone-else",
                    target=entry.target, source_address=entry.source_address,
                    detail=entry.detail, event_id=entry.event_id)
        forged.append(fake)
        head = head_of(fake)
    verdict = verify_chain("a", forged, head_of(original[-1]))
    assert verdict.status == "head_mismatch"


def test_truncated_copy_is_behind_the_announced_head() -> None:
    entries = chain(5)
    verdict = verify_chain("a", entries[:3], head_of(entries[-1]))
    assert verdict.status == "behind" and verdict.verified_seq == 3


def test_entry_claiming_another_node_is_forged() -> None:
    """B's web identity can only publish on B's subjects; an entry there that claims to
    be A's is shown in B's chain as forged, never merged into A's."""
    entries = chain(3, node="b")
    fake = seal(head_of(entries[-1]), node_id="a", at=T0, action="login", actor="admin")
    verdict = verify_chain("b", [*entries, fake], None)
    assert verdict.status == "broken" and verdict.broken_seq == 4
    assert "forged" in verdict.problems[0]


def test_fork_is_found() -> None:
    entries = chain(3)
    fork = seal(head_of(entries[1]), node_id="a", at=T0, action="delete", actor="x")
    verdict = verify_chain("a", [*entries, fork], None)
    assert verdict.status == "broken" and verdict.broken_seq == 3
    assert "second entry" in verdict.problems[0]


def test_canonical_parts_are_json_dumps_with_sorted_keys() -> None:
    """The fast spelling used to verify stored copies is byte for byte the plain one."""
    import json

    from contracts.v1.audit import CANONICAL_VERSION, canonical_time

    for entry in [*chain(3), seal(EMPTY_HEAD, node_id="a", at=T0, action="note",
                                  actor='é"\\\n\u2028x', target=None, source_address=None,
                                  detail={"z": None, "a": True, "ü": "=1", "n": -3})]:
        plain = json.dumps({
            "v": CANONICAL_VERSION, "event_id": entry.event_id, "node_id": entry.node_id,
            "seq": entry.seq, "prev_hash": entry.prev_hash, "at": canonical_time(entry.at),
            "actor": entry.actor, "action": entry.action, "target": entry.target,
            "source_address": entry.source_address, "outcome": entry.outcome,
            "detail": dict(entry.detail)}, sort_keys=True, separators=(",", ":"),
            ensure_ascii=False).encode()
        assert canonical_bytes(entry) == plain


def test_heartbeat_carries_the_audit_head() -> None:
    from services.sync.service import _heartbeat_audit_head

    head = AuditHead(seq=3, hash="ab" * 32)
    assert _heartbeat_audit_head({"audit_head": head.model_dump()}) == head
    for payload in ({}, {"audit_head": None}, {"audit_head": {"seq": "x"}},
                    {"audit_head": {"seq": -1, "hash": "a"}}, {"audit_head": [1, 2]}):
        assert _heartbeat_audit_head(payload) is None
