"""Secrets a node keeps in its data dir: bus passwords, the leaf link's, the cluster's.

Layout (every directory 0700, every file 0600; an operator may put files there
before the first start and they are used as they are, never overwritten):

    secrets/bus/<identity>   password of one bus identity (a service, or `node`)
    secrets/leaf             password between this node's two nats-servers
    secrets/cluster/ca.pem, ca.key, route   the cluster CA and route password
    secrets/cluster/origin   "founded" (this node made the cluster) or "joined"
    secrets/cluster/link.pem, link.key      this node's link certificate (minted each start)

Secrets never travel in an environment variable or on a command line: each process
reads the one it needs from here.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import pki

JOIN_FILE_VERSION = 1
Origin = Literal["founded", "joined"]


class CredentialsError(RuntimeError):
    pass


def secrets_dir(data_dir: Path) -> Path:
    return data_dir / "secrets"


def ensure_private_dir(path: Path) -> Path:
    """The folder, and any parent this creates, readable by this OS user alone."""
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    path.mkdir(exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only this OS user can read, never visible with wider modes."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_or_create_token(path: Path) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(32)
    write_private(path, value.encode() + b"\n")
    return value


def bus_password(data_dir: Path, identity: str, *, create: bool = False) -> str | None:
    path = secrets_dir(data_dir) / "bus" / identity
    if create:
        return _read_or_create_token(path)
    if not path.exists():
        return None
    return path.read_text().strip() or None


def leaf_password(data_dir: Path) -> str:
    return _read_or_create_token(secrets_dir(data_dir) / "leaf")


@dataclass(frozen=True)
class ClusterSecrets:
    ca_cert: bytes
    ca_key: bytes
    route_password: str
    origin: Origin

    def join_file(self) -> bytes:
        """One file an operator copies to a new node so it can join this cluster."""
        return json.dumps({
            "callrec_cluster_join": JOIN_FILE_VERSION,
            "ca_cert": self.ca_cert.decode(),
            "ca_key": self.ca_key.decode(),
            "route_password": self.route_password,
        }, indent=1).encode() + b"\n"


def _cluster_dir(data_dir: Path) -> Path:
    return secrets_dir(data_dir) / "cluster"


def load_cluster(data_dir: Path) -> ClusterSecrets | None:
    folder = _cluster_dir(data_dir)
    needed = [folder / name for name in ("ca.pem", "ca.key", "route")]
    if not all(path.exists() for path in needed):
        return None
    origin_path = folder / "origin"
    origin_text = origin_path.read_text().strip() if origin_path.exists() else "founded"
    origin: Origin = "joined" if origin_text == "joined" else "founded"
    return ClusterSecrets(
        ca_cert=needed[0].read_bytes(),
        ca_key=needed[1].read_bytes(),
        route_password=needed[2].read_text().strip(),
        origin=origin,
    )


def _store_cluster(data_dir: Path, found: ClusterSecrets) -> ClusterSecrets:
    folder = ensure_private_dir(_cluster_dir(data_dir))
    write_private(folder / "ca.pem", found.ca_cert)
    write_private(folder / "ca.key", found.ca_key)
    write_private(folder / "route", found.route_password.encode() + b"\n")
    write_private(folder / "origin", found.origin.encode() + b"\n")
    return found


def found_cluster(data_dir: Path, node_id: str) -> ClusterSecrets:
    """This node starts a new cluster: a fresh CA and route password."""
    cert, key = pki.new_ca(node_id)
    return _store_cluster(data_dir, ClusterSecrets(
        ca_cert=cert, ca_key=key, route_password=secrets.token_urlsafe(32), origin="founded"))


def parse_join_file(raw: bytes) -> ClusterSecrets:
    try:
        body = json.loads(raw)
        if body.get("callrec_cluster_join") != JOIN_FILE_VERSION:
            raise ValueError("not a callrec join file (or from another version)")
        return ClusterSecrets(
            ca_cert=str(body["ca_cert"]).encode(),
            ca_key=str(body["ca_key"]).encode(),
            route_password=str(body["route_password"]),
            origin="joined",
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(f"unreadable join file: {exc}") from exc


def join_cluster(data_dir: Path, join_file: Path) -> ClusterSecrets:
    """Install a join file; a node that already belongs to another cluster refuses."""
    joining = parse_join_file(join_file.read_bytes())
    current = load_cluster(data_dir)
    if current is not None:
        if current.ca_cert.strip() != joining.ca_cert.strip():
            raise CredentialsError(
                "this node already belongs to another cluster (its data dir has other "
                "cluster secrets); use a fresh data dir to join this one")
        return current
    return _store_cluster(data_dir, joining)


def mint_link_certificate(
    data_dir: Path, cluster: ClusterSecrets, node_id: str, names: list[str]
) -> tuple[Path, Path, Path]:
    """(CA file, certificate file, key file) for the cluster link, minted now."""
    folder = _cluster_dir(data_dir)
    cert, key = pki.link_certificate(cluster.ca_cert, cluster.ca_key, node_id, names)
    write_private(folder / "link.pem", cert)
    write_private(folder / "link.key", key)
    return folder / "ca.pem", folder / "link.pem", folder / "link.key"
