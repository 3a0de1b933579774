"""Log lines are JSON whatever a call's fields hold, and never fail to render."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from callrec.logs import render_json


def test_a_line_is_json_with_every_field() -> None:
    rid = uuid.uuid4()
    line = render_json({"event": "streams_allocated", "recording_id": "rec-1",
                        "ports": [20000, 20002], "path": Path("/data/x"), "id": rid,
                        "caller": "Müller \"the\" <sip:1001@pbx>\n"})
    data = json.loads(line)
    assert data == {"event": "streams_allocated", "recording_id": "rec-1",
                    "ports": [20000, 20002], "path": "/data/x", "id": str(rid),
                    "caller": "Müller \"the\" <sip:1001@pbx>\n"}
    assert "\n" not in line  # one line, whatever the fields hold


def test_objects_it_does_not_know_and_bad_text_still_render() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    assert json.loads(render_json({"event": "x", "obj": Odd()}))["obj"] == "<odd>"
    line = render_json({"event": "x", "from": "\ud800"})  # a lone surrogate off the wire
    assert json.loads(line)["from"] == "\ud800"
