"""Secrets in the data dir, the cluster CA and the bus permissions (no network)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from callrec import buspolicy, credentials, pki
from callrec.config import NodeConfig
from contracts import subjects


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bus_password_created_private_and_stable(tmp_path: Path) -> None:
    first = credentials.bus_password(tmp_path, "web", create=True)
    assert first and len(first) >= 40
    assert credentials.bus_password(tmp_path, "web") == first
    assert credentials.bus_password(tmp_path, "web", create=True) == first
    assert credentials.bus_password(tmp_path, "capture") is None
    path = tmp_path / "secrets" / "bus" / "web"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(tmp_path / "secrets") == 0o700


def test_operator_provided_secret_is_used_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "secrets" / "bus"
    folder.mkdir(parents=True)
    (folder / "sync").write_text("from-the-vault\n")
    assert credentials.bus_password(tmp_path, "sync", create=True) == "from-the-vault"


def test_join_file_round_trip_and_foreign_cluster_refused(tmp_path: Path) -> None:
    founder = credentials.found_cluster(tmp_path / "a", "a")
    join = tmp_path / "join.json"
    credentials.write_private(join, founder.join_file())
    assert _mode(join) == 0o600
    joined = credentials.join_cluster(tmp_path / "b", join)
    assert joined.origin == "joined" and joined.ca_cert == founder.ca_cert
    assert credentials.load_cluster(tmp_path / "b") == joined
    assert credentials.join_cluster(tmp_path / "b", join) == joined  # idempotent
    other = credentials.found_cluster(tmp_path / "c", "c")
    credentials.write_private(join, other.join_file())
    with pytest.raises(credentials.CredentialsError, match="another cluster"):
        credentials.join_cluster(tmp_path / "b", join)
    join.write_text("{}")
    with pytest.raises(credentials.CredentialsError, match="join file"):
        credentials.parse_join_file(join.read_bytes())


def test_link_certificate_chains_to_the_cluster_ca_only(tmp_path: Path) -> None:
    ca_cert, ca_key = pki.new_ca("a")
    cert_pem, key_pem = pki.link_certificate(ca_cert, ca_key, "a", ["127.0.0.1", "host-a"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "host-a" in names.get_values_for_type(x509.DNSName)
    assert "a" in names.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert))
    other_ca, _ = pki.new_ca("mallory")
    with pytest.raises(Exception):  # noqa: B017 - signature or issuer mismatch
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other_ca))
    # Loadable as a TLS identity (what nats-server will do with it).
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "c.pem", tmp_path / "k.pem")


def test_local_names_cover_loopback_and_configured_addresses() -> None:
    names = pki.local_names("10.9.8.7", None, "0.0.0.0")
    assert "10.9.8.7" in names and "127.0.0.1" in names
    assert "0.0.0.0" not in names


def test_each_service_may_state_only_its_own_facts() -> None:
    node = "n1"
    owners: dict[str, set[str]] = {}
    for identity in buspolicy.SERVICE_IDENTITIES:
        allowed = buspolicy.permissions(identity, node)["publish"]["allow"]
        for subject in allowed:
            if ".evt." in subject:
                owners.setdefault(subject.rsplit(".evt.", 1)[1], set()).add(identity)
        assert ">" not in allowed
        managing = ("$JS.API.STREAM.CREATE", "$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE")
        assert not any(s.startswith(managing) for s in allowed)
    assert owners["user.upserted"] == {"web"}
    assert owners["user.token_issued"] == owners["user.token_revoked"] == {"web"}
    assert owners["recording.purged"] == {"web", "scheduler"}
    assert owners["recording.completed"] == {"capture", "sync"}  # sync: takeovers
    assert owners["recording.hold_changed"] == {"web"}


def test_only_sync_serves_object_reads_and_inboxes_are_private() -> None:
    reads = [subjects.rpc("n1", subjects.SYNC, op)
             for op in (subjects.SYNC_READ, subjects.SYNC_READ_LIVE)]
    peer_reads = [subjects.rpc("n2", subjects.SYNC, op)
                  for op in (subjects.SYNC_READ, subjects.SYNC_READ_LIVE)]
    for identity in buspolicy.SERVICE_IDENTITIES:
        perms = buspolicy.permissions(identity, "n1")
        subscribe = perms["subscribe"]["allow"]
        for read in reads:
            serves_read = any(_matches(pattern, read) for pattern in subscribe)
            assert serves_read == (identity == "sync"), (identity, read)
        for read in peer_reads:  # a peer's files: only our sync asks for them
            asks = any(_matches(pattern, read) for pattern in perms["publish"]["allow"])
            assert asks == (identity == "sync"), (identity, read)
        inboxes = [s for s in subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"{subjects.inbox_prefix(identity)}.>"]


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_services_are_never_told_the_admin_password() -> None:
    config = NodeConfig(node_id="n1", admin_password="s3cret")
    assert "s3cret" not in config.to_env()["CALLREC_CONFIG"]
