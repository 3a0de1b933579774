"""A small SIP user agent client for tests, where SIPp cannot express the exchange.

SIPp 3.6.1 sends one RTP stream, takes no variables inside XML attributes and needs
an SDP answer's Content-Type to be exactly ``application/sdp``; a SIPREC SBC sends
two or more streams, multipart bodies, UPDATEs with new metadata, over UDP or TCP.
This client sends message texts written by the test (placeholders already filled),
fixes their line endings and Content-Length, matches responses by Call-ID and CSeq,
retransmits over UDP (RFC 3261 Timer A), builds the ACK and BYE of a dialog, and
answers any request the recorder sends it (BYE, OPTIONS) with 200.

It imports nothing from ``services/``: it is the PBX, not the recorder.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

__all__ = ["Dialog", "SipMessage", "Uac", "UacError", "finish_message", "parse_message"]

_COMPACT = {
    "i": "call-id", "m": "contact", "f": "from", "t": "to", "v": "via",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
}
T1 = 0.5


class UacError(AssertionError):
    """The recorder did not answer as a SIP peer must."""


@dataclass
class SipMessage:
    start_line: str
    headers: list[tuple[str, str]]
    body: str

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.start_line.split()[1]) if self.is_response else 0

    @property
    def method(self) -> str:
        return self.start_line.split()[0] if not self.is_response else ""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if _COMPACT.get(key.lower(), key.lower()) == wanted:
                return value
        return None

    def all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [v for k, v in self.headers if _COMPACT.get(k.lower(), k.lower()) == wanted]

    @property
    def cseq(self) -> tuple[int, str]:
        number, method = (self.header("cseq") or "0 NONE").split()
        return int(number), method.upper()

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    def to_tag(self) -> str | None:
        found = re.search(r";\s*tag=([^;>\s]+)", self.header("to") or "")
        return found.group(1) if found else None

    def contact_uri(self) -> str | None:
        contact = self.header("contact") or ""
        found = re.search(r"<([^>]+)>", contact)
        return found.group(1) if found else (contact.split(";")[0].strip() or None)


def parse_message(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return SipMessage(lines[0], headers, body.decode("utf-8", "replace"))


def finish_message(text: str) -> bytes:
    """CRLF line endings everywhere and a Content-Length that matches the body.

    Sample files are written with plain newlines; the leading blank lines and the
    indentation a Python string may carry are removed.
    """
    text = text.lstrip("\n").replace("\r\n", "\n")
    head, sep, body = text.partition("\n\n")
    head_lines = [ln for ln in head.split("\n") if not re.match(r"(?i)(content-length|l)\s*:", ln)]
    body_bytes = body.replace("\n", "\r\n").encode() if sep else b""
    head_lines.append(f"Content-Length: {len(body_bytes)}")
    return "\r\n".join(head_lines).encode() + b"\r\n\r\n" + body_bytes


@dataclass
class Dialog:
    """What the client needs to send in-dialog requests after a 2xx."""

    call_id: str
    from_header: str
    to_header: str
    request_uri: str
    cseq: int
    answer: SipMessage
    extra: dict[str, str] = field(default_factory=dict)


class Uac:
    """One SIP client socket (UDP, or one TCP connection) toward the recorder."""

    def __init__(self, server: tuple[str, int], transport: str = "udp",
                 local_ip: str = "127.0.0.1") -> None:
        self.server = server
        self.transport = transport.lower()
        self.local_ip = local_ip
        if self.transport == "tcp":
            self.sock = socket.create_connection(server, timeout=5)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_ip, 0))
        self.local_port: int = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self._buffer = b""
        self._lock = threading.Lock()
        self.received: list[SipMessage] = []
        self.requests_from_recorder: list[SipMessage] = []

    @property
    def local(self) -> str:
        return f"{self.local_ip}:{self.local_port}"

    @property
    def via_transport(self) -> str:
        return "TCP" if self.transport == "tcp" else "UDP"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # ---- wire --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport == "tcp":
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def _read(self) -> SipMessage | None:
        if self.transport == "tcp":
            while True:
                message = self._take_from_buffer()
                if message is not None:
                    return message
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    return None
                if not chunk:
                    raise UacError("the recorder closed the TCP connection")
                self._buffer += chunk
        try:
            data, _ = self.sock.recvfrom(65536)
        except TimeoutError:
            return None
        if not data.strip():
            return None  # keep-alive
        return parse_message(data)

    def _take_from_buffer(self) -> SipMessage | None:
        self._buffer = self._buffer.lstrip(b"\r\n")
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = parse_message(self._buffer[: end + 4])
        length = int(head.header("content-length") or 0)
        total = end + 4 + length
        if len(self._buffer) < total:
            return None
        data, self._buffer = self._buffer[:total], self._buffer[total:]
        return parse_message(data)

    def _answer_request(self, request: SipMessage) -> None:
        """The recorder's own requests (BYE on media timeout, OPTIONS): 200 OK."""
        self.requests_from_recorder.append(request)
        if request.method == "ACK":
            return
        lines = ["SIP/2.0 200 OK"]
        for name in ("via", "from", "to", "call-id", "cseq"):
            lines.extend(f"{name.title()}: {value}" for value in request.all(name))
        self.send(finish_message("\n".join(lines) + "\n\n"))

    # ---- transactions ------------------------------------------------------------

    def request(self, data: bytes, timeout: float = 10.0) -> SipMessage:
        """Send a request, retransmit it over UDP, return its final response."""
        sent = parse_message(data)
        key = (sent.call_id, sent.cseq)
        deadline = time.monotonic() + timeout
        interval = T1
        self.send(data)
        next_send = time.monotonic() + interval
        provisional = False
        while time.monotonic() < deadline:
            if self.transport == "udp" and not provisional and time.monotonic() >= next_send:
                self.send(data)  # Timer A/E: UDP only, until something answers
                interval = min(interval * 2, 4.0)
                next_send = time.monotonic() + interval
            message = self._read()
            if message is None:
                continue
            self.received.append(message)
            if not message.is_response:
                self._answer_request(message)
                continue
            if (message.call_id, message.cseq) != key:
                continue
            if message.status < 200:
                provisional = True
                continue
            return message
        raise UacError(f"no final response to {sent.start_line!r} in {timeout}s")

    def invite(self, data: bytes, timeout: float = 10.0) -> tuple[SipMessage, Dialog | None]:
        """INVITE; for a non-2xx final response the ACK is sent here (RFC 3261 17.1.1.3)."""
        sent = parse_message(data)
        response = self.request(data, timeout)
        if response.status >= 300:
            self.send(self._ack_for_failure(sent, response))
            return response, None
        from_header = sent.header("from") or ""
        dialog = Dialog(
            call_id=sent.call_id,
            from_header=from_header,
            to_header=response.header("to") or "",
            request_uri=response.contact_uri() or sent.start_line.split()[1],
            cseq=sent.cseq[0],
            answer=response,
        )
        return response, dialog

    def _ack_for_failure(self, sent: SipMessage, response: SipMessage) -> bytes:
        lines = [f"ACK {sent.start_line.split()[1]} SIP/2.0",
                 f"Via: {sent.header('via')}",
                 f"From: {sent.header('from')}",
                 f"To: {response.header('to')}",
                 f"Call-ID: {sent.call_id}",
                 f"CSeq: {sent.cseq[0]} ACK",
                 "Max-Forwards: 70"]
        return finish_message("\n".join(lines) + "\n\n")

    def in_dialog(self, dialog: Dialog, method: str, *, body: str = "",
                  content_type: str = "application/sdp", cseq: int | None = None,
                  headers: tuple[str, ...] = ()) -> bytes:
        """An ACK, BYE (or any request) inside the dialog."""
        if method != "ACK":
            dialog.cseq += 1
        number = dialog.cseq if cseq is None else cseq
        lines = [f"{method} {dialog.request_uri} SIP/2.0",
                 f"Via: SIP/2.0/{self.via_transport} {self.local};branch=z9hG4bK"
                 f"{uuid.uuid4().hex[:16]};rport",
                 f"From: {dialog.from_header}",
                 f"To: {dialog.to_header}",
                 f"Call-ID: {dialog.call_id}",
                 f"CSeq: {number} {method}",
                 "Max-Forwards: 70",
                 f"Contact: <sip:{self.local};transport={self.transport}>",
                 *headers]
        if body:
            lines.append(f"Content-Type: {content_type}")
        return finish_message("\n".join(lines) + "\n\n" + body)

    def ack(self, dialog: Dialog, body: str = "") -> None:
        self.send(self.in_dialog(dialog, "ACK", body=body))

    def bye(self, dialog: Dialog, timeout: float = 10.0) -> SipMessage:
        return self.request(self.in_dialog(dialog, "BYE"), timeout)

    def drain(self, seconds: float) -> None:
        """Keep answering the recorder's requests for a while (e.g. while media flows)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._read()
            if message is None:
                continue
            self.received.append(message)
            if not message.is_response:
                self._answer_request(message)
