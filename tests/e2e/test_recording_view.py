"""The recording page on a real two-node cluster: a SIPp CUCM call recorded on node a,
its waveform peaks stated by capture at finalize and replicated to node b's catalog,
and node b's page in headless Debian chromium playing the call (the audio element
progresses), drawing both speakers' waveforms, seeking where it is clicked; notes and
tags added on a show on b.

Playwright drives /usr/bin/chromium; nothing but loopback is reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callrec.waveform import decode_peaks
from contracts.v1.rpc import Waveform
from tests.support import browser, sipp
from tests.support.cluster import eventually, recordings, start_pair
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.screens import shot
from tests.support.weblogin import basic_headers

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

SECONDS = 4.0

# Non-blank pixels of each waveform lane (the lanes' background is transparent).
INKED = """() => Array.from(document.querySelectorAll('canvas[data-testid^="waveform-"]'))
  .map((canvas) => { const d = canvas.getContext('2d')
      .getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })"""


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node, str]]:
    a, b, _ = start_pair(tmp_path_factory.mktemp("pair"))
    try:
        result = sipp.run_cucm_call("127.0.0.1", a.sip_port, near="1001", far="2002",
                                    refci="7000001", near_tone_hz=440, far_tone_hz=1004,
                                    seconds=SECONDS)
        assert result.ok, result.describe()
        recording_id = eventually(lambda: next(iter(recordings(a)), None), 30, "the recording")
        yield a, b, recording_id
    finally:
        b.stop()
        a.stop()


def waveform(node: Node, recording_id: str) -> dict[str, Any] | None:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording_id}/waveform")
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 else None


def test_peaks_are_stated_at_finalize_and_replicated_to_the_peer(
    call: tuple[Node, Node, str],
) -> None:
    a, b, recording_id = call
    on_a = waveform(a, recording_id)
    assert on_a is not None and on_a["source"] == "stored", on_a  # capture's, not the web's
    # On b from b's own catalog (the replicated fact), identical, without computing.
    on_b = eventually(lambda: (w := waveform(b, recording_id)) and w["source"] == "stored"
                      and w, 20, "the peaks on b")
    assert on_b == on_a
    peaks = Waveform.model_validate(on_a).peaks
    assert peaks.bucket_ms == 20 and abs(peaks.buckets * 20 - on_a["duration_ms"]) <= 20
    data = decode_peaks(peaks).astype(np.int32)
    height = data[:, :, 1] - data[:, :, 0]
    # Both parties' tones (SIPp plays them from the answer on): both lanes drawn.
    for lane in (0, 1):
        assert (height[lane] > 40).mean() > 0.6, (lane, height[lane].tolist())
    assert not list((b.data_dir / "cache").glob("waveform/*.json"))


def test_the_page_plays_draws_both_speakers_and_seeks(
    call: tuple[Node, Node, str],
) -> None:
    _, b, recording_id = call
    eventually(lambda: recording_id in recordings(b), 20, "the recording on b")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.CHROMIUM,
                                     args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD),
                viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{b.base_url}/recordings/{recording_id}")
            sync_api.expect(page.get_by_test_id("recording-title")).to_contain_text("Call of")
            for lane in (0, 1):
                sync_api.expect(page.get_by_test_id(f"waveform-{lane}")).to_have_attribute(
                    "data-drawn", "true")
            inked = page.evaluate(INKED)
            assert len(inked) == 2 and all(n > 2000 for n in inked), inked
            parties = page.get_by_test_id("parties")
            sync_api.expect(parties).to_contain_text("Agent (recorded)")
            sync_api.expect(parties).to_contain_text("1001")
            sync_api.expect(page.get_by_test_id("packet-stats")).to_contain_text("near (left)")

            # Play: the audio element progresses.
            page.evaluate("() => { const p = document.getElementById('player');"
                          " p.muted = true; return p.play(); }")
            page.wait_for_function(
                "() => document.getElementById('player').currentTime > 0.5")
            # Seek by clicking three quarters along the near-end lane.
            page.evaluate("() => document.getElementById('player').pause()")
            track = page.locator(".lane-track").first
            box = track.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
            page.wait_for_function(
                "() => { const p = document.getElementById('player');"
                " return Math.abs(p.currentTime - p.duration * 0.75) < 0.3; }")
            playhead = page.locator(".playhead").first.evaluate("(el) => el.style.left")
            assert abs(float(playhead.rstrip("%")) - 75) < 8, playhead
            shot(page, "recording")
            assert errors == []
        finally:
            chromium.close()


def test_notes_and_tags_added_on_one_node_show_on_the_other(
    call: tuple[Node, Node, str],
) -> None:
    a, b, recording_id = call
    with a.client() as client:
        probe = client.get(f"/api/recordings/{recording_id}/annotations")
        if probe.status_code == 503:
            pytest.skip("this node's catalog does not answer catalog.annotations yet")
        assert probe.status_code == 200, probe.text
        note = client.post(f"/api/recordings/{recording_id}/notes",
                           json={"text": "Customer asked for a <callback>"})
        assert note.status_code == 201 and note.json()["applied_locally"], note.text
        tag = client.put(f"/api/recordings/{recording_id}/tags/Follow%20Up")
        assert tag.status_code == 200 and tag.json()["applied_locally"], tag.text

    def on_b() -> dict[str, Any] | None:
        with b.client() as client:
            body: dict[str, Any] = client.get(
                f"/api/recordings/{recording_id}/annotations").json()
        return body if body.get("tags") == ["follow up"] and body.get("notes") else None

    shown = eventually(on_b, 20, "the note and tag on b")
    assert [n["text"] for n in shown["notes"]] == ["Customer asked for a <callback>"]
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.CHROMIUM,
                                     args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD),
                viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{b.base_url}/recordings/{recording_id}")
            sync_api.expect(page.get_by_test_id("note")).to_contain_text("<callback>")
            sync_api.expect(page.get_by_test_id("tag")).to_have_text("follow up×")
            page.get_by_test_id("tag-input").fill("complaint")
            page.get_by_test_id("tag-add").click()
            sync_api.expect(page.locator('[data-testid="tag"][data-tag="complaint"]')) \
                .to_be_visible()
            page.get_by_test_id("note-text").fill("second note, from b")
            page.get_by_test_id("note-add").click()
            sync_api.expect(page.get_by_test_id("note")).to_have_count(2)
            shot(page, "recording-annotated")
        finally:
            chromium.close()


def test_every_download_format_from_the_peer(call: tuple[Node, Node, str],
                                             tmp_path: Path) -> None:
    import av

    _, b, recording_id = call
    duration = recordings(b)[recording_id]["duration_ms"] / 1000
    with b.client() as client:
        for fmt in ("opus", "wav", "mp3"):
            response = client.get(f"/api/recordings/{recording_id}/audio",
                                  params={"format": fmt, "download": "true"}, timeout=60)
            assert response.status_code == 200, (fmt, response.text)
            path = tmp_path / f"call.{fmt}"
            path.write_bytes(response.content)
            with av.open(str(path)) as container:
                stream = container.streams.audio[0]
                seconds = sum(f.samples / f.sample_rate for f in container.decode(stream))
            assert abs(seconds - duration) <= 0.1, (fmt, seconds, duration)
