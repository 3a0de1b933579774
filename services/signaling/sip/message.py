"""RFC 3261 message model: parsing, rendering and response building.

Everything here is pure (no sockets, no asyncio) so the transaction and
dialog layers can be tested with plain byte strings.  Input arrives from
untrusted peers, so every parser either returns a value or raises
:class:`SipParseError`; nothing else is allowed to escape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASON_PHRASES",
    "Headers",
    "NameAddr",
    "ParamDict",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_response",
    "error_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "serialize",
]

MAX_MESSAGE_SIZE = 64 * 1024
MAX_CSEQ = 2**31 - 1


class SipParseError(ValueError):
    """Raised for any malformed or hostile SIP input."""


# --------------------------------------------------------------------------
# Lexical helpers
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Characters that never belong inside a URI (whitespace, controls, delimiters).
_URI_FORBIDDEN_RE = re.compile(r'[\x00-\x20\x7f<>"]')
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")


# Tokens already checked (header and parameter names repeat in every message). Bounded:
# once full, a peer's new names are checked by the expression every time.
_TOKENS: set[str] = set()
_TOKENS_MAX = 4096


def _is_token(text: str) -> bool:
    if text in _TOKENS:
        return True
    if _TOKEN_RE.fullmatch(text) is None:
        return False
    if len(_TOKENS) < _TOKENS_MAX:
        _TOKENS.add(text)
    return True


def _split_quoted(text: str, sep: str, *, angle: bool = False) -> list[str]:
    """Split on *sep* outside quoted strings (and outside <...> if asked).

    Display names and generic parameters may contain separators inside
    quotes, so a naive ``str.split`` would cut them in half.
    """
    if '"' not in text and not (angle and "<" in text):
        return text.split(sep)  # nothing to honour: the common case, at C speed
    parts: list[str] = []
    buf: list[str] = []
    in_quote = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
            buf.append(ch)
        elif angle and ch == "<":
            in_angle = True
            buf.append(ch)
        elif angle and ch == ">":
            in_angle = False
            buf.append(ch)
        elif ch == sep and not in_angle:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quote:
        raise SipParseError("unterminated quoted string")
    parts.append("".join(buf))
    return parts


def _unquote(text: str) -> str:
    """Return the content of a quoted-string, resolving backslash escapes."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise SipParseError(f"not a quoted string: {text!r}")
    out: list[str] = []
    i = 1
    end = len(text) - 1
    while i < end:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= end:
                raise SipParseError("dangling escape in quoted string")
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            raise SipParseError("unescaped quote in quoted string")
        out.append(ch)
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ParamDict(dict[str, str | None]):
    """A dict whose look-ups ignore case but which keeps the original spelling.

    RFC 3261 parameter names are case-insensitive, yet re-rendering must not
    rewrite what the peer sent (some equipment compares byte-for-byte).
    """

    def _find(self, key: str) -> str | None:
        if dict.__contains__(self, key):
            return key
        lower = key.lower()
        for existing in self.keys():
            if existing.lower() == lower:
                return existing
        return None

    def __getitem__(self, key: str) -> str | None:
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        return dict.__getitem__(self, found)

    def __setitem__(self, key: str, value: str | None) -> None:
        found = self._find(key)
        if found is not None and found != key:
            dict.__delitem__(self, found)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        dict.__delitem__(self, found)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        found = self._find(key)
        return default if found is None else dict.__getitem__(self, found)


def _parse_params(text: str, *, what: str) -> ParamDict:
    """Parse ``;a=b;flag`` (leading ';' already removed by the caller)."""
    params = ParamDict()
    if not text.strip():
        return params
    # Collected into a plain dict first: ParamDict's case-blind assignment scans every
    # key; only names that differ from an earlier one in case alone need it.
    pairs: dict[str, str | None] = {}
    order: list[tuple[str, str | None]] = []
    lowered: set[str] = set()
    clash = False
    for raw in _split_quoted(text, ";"):
        item = raw.strip()
        if not item:
            raise SipParseError(f"empty {what} parameter")
        name, eq, value = item.partition("=")
        name = name.strip()
        if not _is_token(name):
            raise SipParseError(f"bad {what} parameter name: {name!r}")
        param: str | None = None
        if eq:
            value = value.strip()
            if value.startswith('"'):
                _unquote(value)  # validate; keep the quoted form for re-rendering
            elif not value or _URI_FORBIDDEN_RE.search(value):
                raise SipParseError(f"bad {what} parameter value: {value!r}")
            param = value
        lower = name.lower()
        if lower in lowered and name not in pairs:
            clash = True
        lowered.add(lower)
        pairs[name] = param
        order.append((name, param))
    if not clash:
        dict.update(params, pairs)
        return params
    for name, param in order:
        params[name] = param
    return params


def _render_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]``; IPv6 references are returned without brackets."""
    if not text:
        raise SipParseError("empty host")
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise SipParseError("unterminated IPv6 reference")
        host = text[1:close]
        if not host or _IPV6_RE.fullmatch(host) is None or ":" not in host:
            raise SipParseError(f"bad IPv6 address: {host!r}")
        rest = text[close + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(f"garbage after IPv6 reference: {rest!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if _HOSTNAME_RE.fullmatch(host) is None:
            raise SipParseError(f"bad host: {host!r}")
        if not colon:
            return host, None
    return host, _parse_port(port_text)


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise SipParseError(f"bad port: {text!r}")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"port out of range: {port}")
    return port


def _render_hostport(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


# --------------------------------------------------------------------------
# URIs and addresses
# --------------------------------------------------------------------------


@dataclass
class SipUri:
    """A sip:, sips: or tel: URI.

    ``host`` holds IPv6 addresses without brackets so it can be handed to
    socket APIs directly; ``__str__`` puts the brackets back.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    password: str | None = None
    params: dict[str, str | None] = field(default_factory=ParamDict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, ParamDict):
            self.params = ParamDict(self.params)

    def __str__(self) -> str:
        if self.scheme == "tel":
            text = f"tel:{self.user or ''}"
        else:
            userinfo = ""
            if self.user is not None:
                userinfo = self.user
                if self.password is not None:
                    userinfo += ":" + self.password
                userinfo += "@"
            text = f"{self.scheme}:{userinfo}{_render_hostport(self.host, self.port)}"
        text += _render_params(self.params)
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return text


def parse_uri(text: str) -> SipUri:
    """Parse a SIP/SIPS/tel URI; other schemes are refused because we cannot route them."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME_RE.fullmatch(scheme) is None:
        raise SipParseError(f"missing URI scheme: {text[:80]!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips", "tel"):
        raise SipParseError(f"unsupported URI scheme: {scheme!r}")
    if not rest or _URI_FORBIDDEN_RE.search(rest):
        raise SipParseError(f"bad characters in URI: {text[:80]!r}")

    rest, qmark, header_text = rest.partition("?")
    headers: dict[str, str] = {}
    if qmark:
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise SipParseError(f"bad URI header: {item!r}")
            headers[name] = value

    if scheme == "tel":
        number, _, param_text = rest.partition(";")
        if not number:
            raise SipParseError("empty tel number")
        return SipUri(
            scheme="tel",
            user=number,
            host="",
            params=_parse_params(param_text, what="URI"),
            headers=headers,
        )

    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at != -1:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        if not user:
            raise SipParseError("empty user part")
        password = pw if pcolon else None
    if rest.startswith("["):
        close = rest.find("]")
        if close == -1:
            raise SipParseError("unterminated IPv6 reference")
        semi = rest.find(";", close)
    else:
        semi = rest.find(";")
    if semi == -1:
        hostport, param_text = rest, ""
    else:
        hostport, param_text = rest[:semi], rest[semi + 1 :]
    host, port = _parse_hostport(hostport)
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_parse_params(param_text, what="URI"),
        headers=headers,
    )


@dataclass
class NameAddr:
    """The value of From/To/Contact-like headers: optional name, URI, header params."""

    display: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=ParamDict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, ParamDict):
            self.params = ParamDict(self.params)

    @property
    def tag(self) -> str | None:
        """Dialog identification hinges on this, hence the shortcut."""
        return self.params.get("tag")

    def __str__(self) -> str:
        prefix = f"{_quote(self.display)} " if self.display is not None else ""
        return f"{prefix}<{self.uri}>{_render_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr or addr-spec; in the latter, ';' params belong to the header."""
    text = text.strip()
    if not text:
        raise SipParseError("empty address")
    display: str | None = None
    if text.startswith('"'):
        # Find the end of the quoted display name honouring escapes.
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise SipParseError("unterminated display name")
        display = _unquote(text[: i + 1])
        text = text[i + 1 :].lstrip()
        if not text.startswith("<"):
            raise SipParseError("quoted display name without <uri>")
    if "<" in text:
        lt = text.index("<")
        if display is None:
            name = text[:lt].strip()
            if name:
                # Unquoted names should be tokens, but real UAs send spaces,
                # brackets and non-ASCII; only refuse what breaks re-rendering.
                if '"' in name or _CTL_RE.search(name):
                    raise SipParseError(f"bad display name: {name[:40]!r}")
                display = " ".join(name.split())
        gt = text.find(">", lt)
        if gt == -1:
            raise SipParseError("missing '>' in address")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip()
        if rest and not rest.startswith(";"):
            raise SipParseError(f"garbage after address: {rest[:40]!r}")
        return NameAddr(display, uri, _parse_params(rest[1:], what="header"))
    uri_text, _, param_text = text.partition(";")
    return NameAddr(None, parse_uri(uri_text), _parse_params(param_text, what="header"))


# From and To values seen lately, parsed: a dialog's From (and To, once tagged) comes
# back in every request of the dialog and a PBX's To is often the same for every call.
# Callers get a copy, so no message shares mutable parts with another.
_ADDRESSES: dict[str, NameAddr] = {}
_ADDRESSES_MAX = 4096


def parse_name_addr_cached(text: str) -> NameAddr:
    """parse_name_addr, remembering the last few thousand values."""
    parsed = _ADDRESSES.get(text)
    if parsed is None:
        parsed = parse_name_addr(text)
        if len(_ADDRESSES) >= _ADDRESSES_MAX:
            del _ADDRESSES[next(iter(_ADDRESSES))]
        _ADDRESSES[text] = parsed
    uri = parsed.uri
    return NameAddr(parsed.display,
                    SipUri(uri.scheme, uri.user, uri.host, uri.port, uri.password,
                           ParamDict(uri.params), dict(uri.headers)),
                    ParamDict(parsed.params))


@dataclass
class Via:
    """One Via hop; responses are routed back along these."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=ParamDict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, ParamDict):
            self.params = ParamDict(self.params)

    @property
    def branch(self) -> str | None:
        """Transaction matching key (RFC 3261 17.2.3)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """Source address a previous hop observed, if it differed from host."""
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value (RFC 3581) once filled in; None for the bare flag or junk."""
        value = self.params.get("rport")
        if value is None or _DIGITS_RE.fullmatch(value) is None or len(value) > 5:
            return None
        port = int(value)
        return port if port <= 65535 else None

    @property
    def rport_requested(self) -> bool:
        """True when the client asked us to answer to the source port (RFC 3581)."""
        return "rport" in self.params

    def __str__(self) -> str:
        hostport = _render_hostport(self.host, self.port)
        return f"SIP/2.0/{self.transport} {hostport}{_render_params(self.params)}"


_VIA_RE = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)\s+([^;\s]+)\s*(?:;(.*))?", re.I | re.S
)


def parse_via(value: str) -> Via:
    """Parse a single via-parm (callers split comma-joined values first)."""
    m = _VIA_RE.fullmatch(value.strip())
    if m is None:
        raise SipParseError(f"bad Via: {value[:80]!r}")
    transport, hostport, param_text = m.group(1), m.group(2), m.group(3) or ""
    host, port = _parse_hostport(hostport)
    return Via(transport.upper(), host, port, _parse_params(param_text, what="Via"))


# --------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------

_COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "History-Info",
        "Identity",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Remote-Party-ID",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "Session-Expires",
        "Session-ID",
        "SIP-ETag",
        "SIP-If-Match",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1).  Anything
# not listed here (Date, WWW-Authenticate, Authorization, ...) may contain
# commas that are not separators, so it is never split.
_LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Diversion",
        "Error-Info",
        "History-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)


def _canonical_name(name: str) -> str:
    lower = name.lower()
    if lower in _COMPACT:
        return _COMPACT[lower]
    return _CANONICAL.get(lower, name)


_KEYS: dict[str, str] = {}


# A peer's header names as written -> (canonical name, its lower-cased form), bounded.
_PARSED_NAMES: dict[str, tuple[str, str]] = {}


def _lookup_key(name: str) -> str:
    """The lower-cased canonical name, memoised for the names code asks for (peers'
    header names never reach this table: only lookups by name do)."""
    key = _KEYS.get(name)
    if key is None:
        key = _canonical_name(name).lower()
        if len(_KEYS) < 512:
            _KEYS[name] = key
    return key


class Headers:
    """Ordered, case-insensitive multi-map of SIP headers.

    Order matters in SIP (Via, Route), and compact names must be treated as
    their long forms, which rules out a plain dict. The lower-cased canonical
    name of each line is kept beside it, and an index from that name to the
    line values is built on the first look-up after a change: a request is looked
    into dozens of times but changed only while it is parsed or built.
    """

    __slots__ = ("_index", "_items", "_keys")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._keys: list[str] = []
        self._index: dict[str, list[str]] | None = None
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _key(name: str) -> str:
        return _lookup_key(name)

    def _lines(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for key, item in zip(self._keys, self._items, strict=True):
                values = index.get(key)
                if values is None:
                    index[key] = [item[1]]
                else:
                    values.append(item[1])
            self._index = index
        return index

    def add(self, name: str, value: str) -> None:
        """Append a header line, rejecting anything that could inject lines."""
        name = name.strip()
        if not _is_token(name):
            raise SipParseError(f"bad header name: {name!r}")
        if _CTL_RE.search(value):
            raise SipParseError(f"control characters in {name} header")
        canonical = _canonical_name(name)
        self._items.append((canonical, value.strip()))
        self._keys.append(canonical.lower())
        self._index = None

    def _add_parsed(self, name: str, value: str) -> None:
        """`add` for the parser, which has checked *name* already. (A printable value
        has no control characters: the expression runs only on the others, tabs.)"""
        if not value.isprintable() and _CTL_RE.search(value):
            raise SipParseError(f"control characters in {name} header")
        names = _PARSED_NAMES.get(name)
        if names is None:
            canonical = _canonical_name(name)
            names = (canonical, canonical.lower())
            if len(_PARSED_NAMES) < 512:
                _PARSED_NAMES[name] = names
        self._items.append((names[0], value.strip()))
        self._keys.append(names[1])
        self._index = None

    def _copy_lines(self, other: Headers, key: str, *, first_only: bool = False) -> None:
        """Append *other*'s lines of a header (by lower-cased canonical name), as they
        are: they passed `add` there."""
        for k, item in zip(other._keys, other._items, strict=True):
            if k == key:
                self._items.append(item)
                self._keys.append(k)
                if first_only:
                    break
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every line of *name* with a single value, keeping its position."""
        key = self._key(name)
        position = self._keys.index(key) if key in self._keys else None
        self.remove(name)
        self.add(name, value)
        if position is not None:
            self._items.insert(position, self._items.pop())
            self._keys.insert(position, self._keys.pop())
        self._index = None

    def remove(self, name: str) -> None:
        """Drop all lines of *name*; missing headers are not an error."""
        key = self._key(name)
        kept = [(k, item) for k, item in zip(self._keys, self._items, strict=True) if k != key]
        self._keys = [k for k, _ in kept]
        self._items = [item for _, item in kept]
        self._index = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first header line's raw value."""
        values = self._lines().get(self._key(name))
        return default if values is None else values[0]

    def get_lines(self, name: str) -> list[str]:
        """Every line's raw value, comma lists not split (a fresh list)."""
        values = self._lines().get(self._key(name))
        return [] if values is None else list(values)

    def get_all(self, name: str) -> list[str]:
        """Return every value, splitting comma lists only where the grammar allows."""
        key = self._key(name)
        values = self._lines().get(key)
        if values is None:
            return []
        if key not in _LIST_HEADERS:
            return list(values)
        out: list[str] = []
        for value in values:
            out.extend(p.strip() for p in _split_quoted(value, ",", angle=True) if p.strip())
        return out

    def items(self) -> list[tuple[str, str]]:
        """Return (canonical-name, value) pairs in wire order."""
        return list(self._items)

    def copy(self) -> Headers:
        """Shallow copy, handy when deriving one message from another."""
        new = Headers()
        new._items = list(self._items)
        new._keys = list(self._keys)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------

_CSEQ_RE = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z0-9.!%*_+`'~-]+)\s*")


def _parse_cseq(value: str) -> tuple[int, str]:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise SipParseError(f"bad CSeq: {value[:40]!r}")
    number = int(m.group(1))
    if number > MAX_CSEQ:
        raise SipParseError("CSeq number out of range")
    return number, m.group(2)


_P = TypeVar("_P")


class _MessageMixin:
    """Header-derived accessors shared by requests and responses."""

    headers: Headers
    body: bytes

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    def _parsed(self, name: str, parse: Callable[[str], _P]) -> _P:
        """A header parsed once: the UAS, its transactions and its plans ask for From,
        To, Via and CSeq dozens of times per request. The cache is keyed on the raw
        value, so a header changed after parsing is parsed again."""
        raw = self._required(name)
        cache: dict[str, tuple[str, Any]] = self.__dict__.setdefault("_parsed_headers", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == raw:
            return cast(_P, hit[1])
        value = parse(raw)
        cache[name] = (raw, value)
        return value

    @property
    def call_id(self) -> str:
        """The Call-ID; dialogs and recordings are keyed on it."""
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq."""
        return self._parsed("CSeq", _parse_cseq)

    @property
    def from_(self) -> NameAddr:
        """Parsed From header (trailing underscore because ``from`` is a keyword)."""
        return self._parsed("From", parse_name_addr_cached)

    @property
    def to(self) -> NameAddr:
        """Parsed To header."""
        return self._parsed("To", parse_name_addr_cached)

    @property
    def vias(self) -> list[Via]:
        """All Via hops, topmost first, across lines and comma lists (a fresh list)."""
        lines = self.headers.get_lines("Via")
        if not lines:
            return []
        key = "\n".join(lines)
        cache: dict[str, tuple[str, Any]] = self.__dict__.setdefault("_parsed_headers", {})
        hit = cache.get("Via")
        if hit is None or hit[0] != key:
            hit = cache["Via"] = (key, [parse_via(v) for v in self.headers.get_all("Via")])
        return list(hit[1])

    @property
    def content_type(self) -> str | None:
        """Lower-cased media type without parameters, for dispatching on the body."""
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        media = value.split(";", 1)[0].strip().lower()
        return media or None

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards as an int; None when absent."""
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        # 1*DIGIT: leading zeros are legal (RFC 4475 wsinv sends 0068).
        if _DIGITS_RE.fullmatch(value) is None or len(value.lstrip("0")) > 3:
            raise SipParseError(f"bad Max-Forwards: {value[:20]!r}")
        return int(value)


@dataclass(eq=True)
class SipRequest(_MessageMixin):
    """A parsed or locally built SIP request."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"
    # When it reached this host (wall clock; the kernel's stamp over UDP), if known.
    received_at: float | None = field(default=None, compare=False, repr=False)


@dataclass(eq=True)
class SipResponse(_MessageMixin):
    """A parsed or locally built SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"


SipMessage = SipRequest | SipResponse

_MANDATORY_REQUEST_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
# Headers a request carries once: two of them (RFC 4475 multi01) make it ambiguous.
_SINGLE_REQUEST_HEADERS = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")


_MANDATORY_REQUEST_KEYS = tuple((n, n.lower()) for n in _MANDATORY_REQUEST_HEADERS)
_SINGLE_REQUEST_KEYS = tuple((n, n.lower()) for n in _SINGLE_REQUEST_HEADERS)


# Request-URIs found valid (a PBX sends its recording calls to one or a few), bounded.
_REQUEST_URIS: set[str] = set()


def _parse_start_line(line: str) -> SipRequest | SipResponse:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise SipParseError(f"bad status line: {line[:80]!r}")
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code: {code[:10]!r}")
        reason = parts[2] if len(parts) == 3 else ""
        return SipResponse(int(code), reason.strip())
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"bad request line: {line[:80]!r}")
    method, uri, version = parts
    if not _is_token(method):
        raise SipParseError(f"bad method: {method[:40]!r}")
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version: {version[:20]!r}")
    scheme = uri.partition(":")[0].lower()
    if uri in _REQUEST_URIS:
        pass  # the same Request-URI as an earlier request: valid then, valid now
    elif scheme in ("sip", "sips", "tel"):
        parse_uri(uri)
        if len(_REQUEST_URIS) < _TOKENS_MAX:
            _REQUEST_URIS.add(uri)
    elif ":" not in uri or _SCHEME_RE.fullmatch(scheme) is None or _URI_FORBIDDEN_RE.search(uri):
        raise SipParseError(f"bad Request-URI: {uri[:80]!r}")
    return SipRequest(method, uri)


def _unfold(text: str) -> list[str]:
    """Split a header block into logical lines, joining continuation lines."""
    lines: list[str] = []
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line[:1] in (" ", "\t"):
            if len(lines) < 2:
                raise SipParseError("continuation line before first header")
            lines[-1] = lines[-1].rstrip() + " " + line.strip()
        else:
            lines.append(line)
    return lines


def _parse_content_length(value: str) -> int:
    value = value.strip()
    if _DIGITS_RE.fullmatch(value) is None or len(value) > 9:
        raise SipParseError(f"bad Content-Length: {value[:20]!r}")
    return int(value)


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one datagram/framed message; lenient on layout, strict on meaning.

    Layout sloppiness (bare LF, folding, leading CRLF) is common and harmless;
    semantic errors are refused early so higher layers can trust the object.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large")
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    m = _BLANK_LINE_RE.search(data)
    if m is None:
        head_bytes, body = data, b""
    else:
        head_bytes, body = data[: m.start()], data[m.end() :]
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("header section is not valid UTF-8") from exc
    if "\x00" in head:
        raise SipParseError("NUL byte in header section")

    lines = _unfold(head)
    if _CTL_RE.search(lines[0]):
        raise SipParseError("control characters in start line")
    msg = _parse_start_line(lines[0])
    for line in lines[1:]:
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without colon: {line[:40]!r}")
        name = name.rstrip(" \t")
        if not _is_token(name):
            raise SipParseError(f"bad header name: {name[:40]!r}")
        msg.headers._add_parsed(name, value)

    lengths = {_parse_content_length(v) for v in msg.headers.get_all("Content-Length")}
    if len(lengths) > 1:
        raise SipParseError("conflicting Content-Length headers")
    if lengths:
        length = lengths.pop()
        if length > len(body):
            raise SipParseError("Content-Length exceeds available body")
        body = body[:length]
    msg.body = body

    if isinstance(msg, SipRequest):
        index = msg.headers._lines()
        for name, key in _MANDATORY_REQUEST_KEYS:
            if not index.get(key, ("",))[0]:
                raise SipParseError(f"missing or empty {name} header")
        for name, key in _SINGLE_REQUEST_KEYS:
            if len(index.get(key, ())) > 1:
                raise SipParseError(f"more than one {name} header")
        _number, method = msg.cseq
        if method != msg.method:
            raise SipParseError("CSeq method does not match request method")
        msg.from_  # noqa: B018 - validate now so later accessors cannot fail
        msg.to  # noqa: B018
        if not msg.vias:
            raise SipParseError("empty Via header")
        msg.max_forwards  # noqa: B018
    elif "CSeq" in msg.headers:
        msg.cseq  # noqa: B018
    return msg


def serialize(msg: SipRequest | SipResponse) -> bytes:
    """Render to wire format; Content-Length is always recomputed from the body."""
    if isinstance(msg, SipRequest):
        start = f"{msg.method} {msg.uri} {msg.version}"
    else:
        start = f"{msg.version} {msg.status} {msg.reason}"
    lines = [start]
    lines.extend(f"{n}: {v}" for n, v in msg.headers.items() if n != "Content-Length")
    lines.append(f"Content-Length: {len(msg.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + msg.body


REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """Build a response whose headers mirror the request as RFC 3261 8.2.6 requires."""
    if not 100 <= status <= 699:
        raise ValueError(f"status out of range: {status}")
    if reason is None:
        reason = REASON_PHRASES.get(status, "Unknown")
    if _CTL_RE.search(reason):
        raise ValueError("control characters in reason phrase")
    # Via, From, To (our tag aside), Call-ID and CSeq are copied as the request's own
    # lines: they were checked when it was parsed.
    headers = Headers()
    source = request.headers
    headers._copy_lines(source, "via")
    headers._copy_lines(source, "from", first_only=True)
    to_value = source.get("To")
    if to_value is not None and to_tag is not None and request.to.tag is None:
        if not _is_token(to_tag):
            raise ValueError(f"bad tag: {to_tag!r}")
        headers.add("To", f"{to_value};tag={to_tag}")
    else:
        headers._copy_lines(source, "to", first_only=True)
    headers._copy_lines(source, "call-id", first_only=True)
    headers._copy_lines(source, "cseq", first_only=True)
    if status == 100:
        timestamp = request.headers.get("Timestamp")
        if timestamp is not None:
            headers.add("Timestamp", timestamp)
    for name, value in extra_headers:
        headers.add(name, value)
    if content_type is not None:
        headers.set("Content-Type", content_type)
    return SipResponse(status, reason, headers, body)


_SALVAGED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
_TAG_RE = re.compile(r";\s*tag\s*=", re.I)


_LOOSE_VIA_RE = re.compile(
    r"\s*SIP\s*/\s*[0-9]+\.[0-9]+\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?:\s*:\s*([0-9]{1,5}))?([^,]*)", re.I)


def _salvage_via(value: str) -> Via | None:
    """The top Via's sent-by, even from a Via the strict parser refuses (empty
    parameters, another SIP version), since that is where a 400 must go."""
    try:
        return parse_via(_split_quoted(value, ",", angle=True)[0])
    except (SipParseError, IndexError):
        pass
    m = _LOOSE_VIA_RE.match(value)
    if m is None:
        return None
    host = m.group(2).strip("[]")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port <= 65535:
        return None
    params = ParamDict()
    if re.search(r";\s*rport\s*(?:;|,|$)", m.group(4) or ""):
        params["rport"] = None
    return Via(m.group(1).upper(), host, port, params)


def error_response(data: bytes, status: int, problem: str, *, to_tag: str,
                   extra_headers: Iterable[tuple[str, str]] = ()) -> tuple[bytes, Via] | None:
    """An error response to a request that failed to parse, when one can be addressed
    (RFC 3261 8.2, 16.3): the start line is a request other than ACK and the top Via
    parses. Via, From, To, Call-ID and CSeq are copied as they came (whatever of them
    exists), the reason phrase names the problem. None when nothing can be addressed."""
    if len(data) > MAX_MESSAGE_SIZE:
        data = data[:MAX_MESSAGE_SIZE]
    data = data.lstrip(b"\r\n")
    m = _BLANK_LINE_RE.search(data)
    # Header lines with control characters (NUL included) are left out below.
    head = (data if m is None else data[: m.start()]).decode("utf-8", "replace")
    try:
        lines = _unfold(head)
    except SipParseError:
        return None
    if not lines or _CTL_RE.search(lines[0]):
        return None
    method = lines[0].split(" ", 1)[0]
    if not _is_token(method) or method.upper().startswith("SIP/") or method == "ACK":
        return None
    copied: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        canonical = _canonical_name(name)
        if not colon or canonical not in _SALVAGED_HEADERS:
            continue
        value = value.strip()
        if not value or _CTL_RE.search(value):
            continue
        copied.append((canonical, value))
    vias = [value for name, value in copied if name == "Via"]
    if not vias:
        return None
    top = _salvage_via(vias[0])
    if top is None:
        return None
    reason = f"{REASON_PHRASES.get(status, 'Error')} ({_CTL_RE.sub(' ', problem)[:120]})"
    headers = Headers()
    for name, value in copied:
        if name == "To" and not _TAG_RE.search(value) and _is_token(to_tag):
            value = f"{value};tag={to_tag}"
        try:
            headers.add(name, value)
        except SipParseError:
            continue
    for name, value in extra_headers:
        headers.add(name, value)
    return serialize(SipResponse(status, reason, headers)), top


# --------------------------------------------------------------------------
# Stream framing
# --------------------------------------------------------------------------

_CONTENT_LENGTH_LINE_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(.*?)[ \t]*$", re.I)


class StreamFramer:
    """Cut a TCP/TLS byte stream into whole SIP messages (RFC 3261 18.3).

    Over streams Content-Length is the only frame delimiter, so a message
    without it, or a header block that never ends, means the stream can no
    longer be trusted: the caller should close the connection on error.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size
        # Work is O(bytes), however the stream is cut into segments: bytes of the
        # pending message already searched for the blank line are not searched again,
        # and its header block is parsed once, when it is complete.
        self._scanned = 0
        self._total: int | None = None  # length of the pending message, once known

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message that is now complete."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0  # where the pending message starts in buf
        while True:
            if self._total is None:
                if self._scanned == 0:
                    # RFC 5626 keep-alives (CRLFCRLF ping, CRLF pong) between messages.
                    while pos < len(buf) and buf[pos] in (0x0D, 0x0A):
                        pos += 1
                    if pos == len(buf):
                        break
                # The blank line may straddle what was searched already: back up 3 bytes.
                m = _BLANK_LINE_RE.search(buf, pos + max(0, self._scanned - 3))
                if m is None:
                    self._scanned = len(buf) - pos
                    if self._scanned > self._max:
                        raise SipParseError("header section too large")
                    break
                if m.end() - pos > self._max:
                    raise SipParseError("header section too large")
                length = self._content_length(bytes(buf[pos : m.start()]))
                self._total = m.end() - pos + length
                if self._total > self._max:
                    raise SipParseError("message too large")
            if len(buf) - pos < self._total:
                break
            out.append(bytes(buf[pos : pos + self._total]))
            pos += self._total
            self._total = None
            self._scanned = 0
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buf)

    @staticmethod
    def _content_length(head: bytes) -> int:
        value: bytes | None = None
        for line in head.split(b"\n"):
            line = line.rstrip(b"\r")
            m = _CONTENT_LENGTH_LINE_RE.match(line)
            if m is not None:
                if value is not None and m.group(1) != value:
                    raise SipParseError("conflicting Content-Length headers")
                value = m.group(1)
        if value is None:
            raise SipParseError("stream message without Content-Length")
        try:
            return _parse_content_length(value.decode("ascii"))
        except UnicodeDecodeError as exc:
            raise SipParseError("bad Content-Length") from exc
