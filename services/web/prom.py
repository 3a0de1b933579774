"""Merging the Prometheus texts of a node's services into one exposition.

Every service renders the same `# HELP`/`# TYPE` header for shared metric names;
Prometheus rejects repeated headers and wants each family's samples together, so
families are regrouped by name, keeping the first header seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar appends the charset
_SAMPLE_NAME = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)")


@dataclass
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def merge_texts(texts: list[str]) -> str:
    families: dict[str, _Family] = {}
    for text in texts:
        current: str | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    family = families.setdefault(name, _Family())
                    if parts[1] == "HELP" and family.help is None:
                        family.help = line
                    if parts[1] == "TYPE" and family.type is None:
                        family.type = line
                    current = name
                continue
            match = _SAMPLE_NAME.match(line)
            if match is None:
                continue
            name = match.group(1)
            if current is None or not name.startswith(current):
                current = name
            families.setdefault(current, _Family()).samples.append(line)
    out: list[str] = []
    for family in families.values():
        if family.help:
            out.append(family.help)
        if family.type:
            out.append(family.type)
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""
