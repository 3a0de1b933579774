"""Node configuration: one model, filled from flags or `CALLREC_*` environment variables.

The supervisor hands the validated model to every service as JSON in
`CALLREC_CONFIG`, so a service never re-parses flags and all agree on one config.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.subjects import check_node_id
from contracts.v1.numbers import NumberPlan

from .diskspace import Reserve, parse_reserve

CONFIG_ENV = "CALLREC_CONFIG"


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(default_factory=lambda: _default_node_id())
    data_dir: Path = Path("./data")
    bind: str = "127.0.0.1"
    advertise_address: str | None = None
    sip_port: int = Field(default=5060, ge=1, le=65535)
    http_port: int = Field(default=8080, ge=1, le=65535)
    nats_port: int = Field(default=4222, ge=1, le=65535)
    nats_leaf_port: int | None = Field(default=None, ge=1, le=65535)
    cluster_port: int | None = Field(default=None, ge=1, le=65535)
    rtp_port_min: int = Field(default=20000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=29999, ge=1025, le=65535)
    max_channels: int = Field(default=100, ge=0)
    record_all: bool = False
    role: Literal["primary", "backup"] = "primary"
    priority: int = Field(default=0, ge=0)
    peers: tuple[str, ...] = ()
    role_timeout_s: float = Field(default=3.0, ge=0.5, le=300.0)
    # Creates the first admin only; never handed to a service (see to_env).
    admin_password: str | None = None
    # A join file copied from a cluster member (`callrec cluster invite`).
    join_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Both channels together (services/capture/live.py OPUS_BITRATE says why).
    opus_bitrate: int = Field(default=11500, ge=6000, le=128000)
    # How narrowband (G.711, G.729) calls are coded: celt, the cheaper and at 11.5 kbit/s
    # the smaller; auto lets libopus choose (SILK), better from 16 kbit/s up.
    opus_mode: Literal["celt", "auto"] = "celt"
    # No RTP for this long on a leg not on hold ends the leg (BYE) and finalizes; 0: off.
    media_timeout_s: float = Field(default=30.0, ge=0.0)
    # ---- SIP admission (signaling) ----
    # PBX/SBC networks allowed to send SIP; empty: 127.0.0.1 and ::1 when bound to
    # loopback, else nobody (refused, with a loud warning).
    sip_allow: tuple[str, ...] = ()
    sip_rate: float = Field(default=1000.0, gt=0.0)  # requests/s per allow-listed source
    # A new INVITE that waited longer in the node's queue gets 503; 0: never.
    sip_shed_after_s: float = Field(default=1.0, ge=0.0)
    # Legs one source may have answered but without RTP yet; None: half of max_channels.
    sip_pending_media: int | None = Field(default=None, ge=1)
    sip_tcp_per_source: int = Field(default=64, ge=1)
    sip_tcp_max: int = Field(default=1024, ge=1)
    # ---- capacity ----
    # New calls get 503 while the live encoding of the calls in progress is this many
    # seconds behind (what a lost host would cost each call); 0: never
    # (services/capture/capacity.py).
    max_live_lag_s: float = Field(default=5.0, ge=0.0)
    # ---- disk pressure ----
    # Free space below which new calls get 503 while calls in progress record into it:
    # "auto" = max(1 GiB, 5 % of the data file system), at most 25 % of it; or a size
    # ("2G", "500M") or a share ("10%"); "0" turns it off (see callrec.diskspace).
    disk_reserve: str = "auto"
    # ---- number plan ----
    # Rules mapping a recorded number to an extension (contracts.v1.numbers), in order,
    # e.g. "+4930123452XXX/4": what the catalog indexes and the web compares.
    number_plan: tuple[str, ...] = ()

    @field_validator("number_plan")
    @classmethod
    def _number_plan(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(rule) for rule in NumberPlan.parse(value).rules)

    @property
    def numbers(self) -> NumberPlan:
        return NumberPlan.parse(self.number_plan)
    # ---- end number plan ----

    @field_validator("disk_reserve")
    @classmethod
    def _disk_reserve(cls, value: str) -> str:
        parse_reserve(value)
        return value.strip()

    @property
    def reserve(self) -> Reserve:
        return parse_reserve(self.disk_reserve)
    # ---- end disk pressure ----

    # ---- missed calls (refused INVITEs, services/signaling/missed.py) ----
    missed_retention_days: float = Field(default=30.0, gt=0.0, le=3650.0)
    missed_window_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    # ---- end missed calls ----

    @field_validator("sip_allow")
    @classmethod
    def _sip_allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks = []
        for text in value:
            try:
                networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"--sip-allow {text!r}: not an address or CIDR") from exc
        return tuple(networks)
    # ---- end SIP admission ----

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        return check_node_id(value)

    @field_validator("bind", "advertise_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_peer(peer) for peer in value)

    @model_validator(mode="after")
    def _ranges(self) -> NodeConfig:
        if self.rtp_port_min >= self.rtp_port_max:
            raise ValueError("rtp port range is empty: min must be below max")
        if self.peers and self.cluster_port is None:
            raise ValueError("--peer needs --cluster-port (the port peers connect to)")
        return self

    @property
    def media_address(self) -> str:
        """Address written into SDP: where the PBX must send RTP."""
        if self.advertise_address:
            return self.advertise_address
        if self.bind in ("0.0.0.0", "::"):
            return _primary_address()
        return self.bind

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def clustered(self) -> bool:
        return self.cluster_port is not None

    @property
    def leaf_port(self) -> int:
        return self.nats_leaf_port or self.nats_port + 1

    def to_env(self) -> dict[str, str]:
        """What a service is told: everything but secrets (it reads those from files)."""
        public = self.model_copy(update={"admin_password": None})
        return {CONFIG_ENV: public.model_dump_json()}

    @classmethod
    def from_env(cls) -> NodeConfig:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise RuntimeError(f"{CONFIG_ENV} is not set: services are started by 'callrec up'")
        return cls.model_validate_json(raw)


def normalize_peer(peer: str) -> str:
    """Accept `host:port` or `nats-route://host:port` for a peer's cluster port."""
    text = peer.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("nats-route", "nats"):
            raise ValueError(f"peer {peer!r}: use host:port or nats-route://host:port")
        text = rest
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer {peer!r}: expected host:port")
    return f"nats-route://{host}:{port}"


def _default_node_id() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in host).strip("-_")
    return cleaned or "node"


def _primary_address() -> str:
    # A UDP "connect" picks the outgoing interface without sending anything.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
