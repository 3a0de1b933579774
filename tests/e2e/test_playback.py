"""A recording plays in a real browser: headless Debian chromium fetches it through
the API (HTTP Basic), decodes both speakers' channels, and an <audio> element seeks
into it (Range requests) and plays from there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser, sipp
from tests.support.node import ADMIN_PASSWORD, Node

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

DECODE = """async (url) => {
  const data = await (await fetch(url)).arrayBuffer();
  const audio = await new OfflineAudioContext(2, 48000, 48000).decodeAudioData(data);
  const energy = (ch) => { const d = audio.getChannelData(ch); let e = 0;
    for (let i = 0; i < d.length; i++) e += d[i] * d[i]; return e / d.length; };
  // Zero crossings per second of each channel where its tone sounds (10 ms blocks
  // above -26 dBFS RMS; the silence before and after it crosses zero at random):
  // twice the frequency of a pure tone.
  const crossings = (ch) => { const d = audio.getChannelData(ch); const block = 480;
    let n = 0, blocks = 0;
    for (let b = 0; b + block <= d.length; b += block) {
      let e = 0; for (let i = b; i < b + block; i++) e += d[i] * d[i];
      if (e / block < 0.0025) continue;
      blocks++;
      for (let i = b + 1; i < b + block; i++) if ((d[i - 1] < 0) !== (d[i] < 0)) n++;
    }
    return blocks ? n / (blocks * block / 48000) / 2 : 0; };
  return {channels: audio.numberOfChannels, duration: audio.duration,
          energy: [energy(0), energy(1)], hz: [crossings(0), crossings(1)]};
}"""

SEEK = """(url) => new Promise((resolve) => {
  const el = new Audio(url);
  el.muted = true;
  el.onerror = () => resolve({error: el.error && el.error.code});
  el.onloadedmetadata = () => { el.currentTime = 2.0; };
  el.onseeked = () => { el.play().then(() => setTimeout(() =>
      resolve({duration: el.duration, time: el.currentTime}), 300),
    (e) => resolve({error: String(e)})); };
})"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node", extra_args=["--record-all"]).start()
    yield n
    n.stop()


def test_recording_decodes_and_seeks_in_chromium(node: Node) -> None:
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="6000001", near_tone_hz=440, far_tone_hz=1004,
                                seconds=3.0)
    assert result.ok, result.describe()
    recording = node.wait_recordings(1)[0]
    url = f"{node.base_url}/api/recordings/{recording['recording_id']}/audio"
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.CHROMIUM,
                                     args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                http_credentials={"username": "admin", "password": ADMIN_PASSWORD})
            page = context.new_page()
            page.goto(f"{node.base_url}/healthz")  # an origin for fetch()
            decoded: dict[str, Any] = page.evaluate(DECODE, url)
            seek: dict[str, Any] = page.evaluate(SEEK, url)
        finally:
            chromium.close()
    print("chromium decoded:", decoded, "seek:", seek)
    assert decoded["channels"] == 2
    assert abs(decoded["duration"] - recording["duration_ms"] / 1000) <= 0.1
    left_hz, right_hz = decoded["hz"]
    assert abs(left_hz - 440) < 40 and abs(right_hz - 1004) < 60, decoded
    assert "error" not in seek, seek
    assert seek["time"] >= 2.0 and abs(seek["duration"] - decoded["duration"]) <= 0.1
