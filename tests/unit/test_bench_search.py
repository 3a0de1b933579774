"""bench/search.py in its smoke size, so it cannot rot; and a check on its own data that
a search for a recording that exists (its day, its customer's number or its agent's
extension) finds it, through both query shapes of the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import search as bench
from services.catalog import projection

FINDS_ITS_SAMPLE = (
    "admin: 1 day + customer number",
    "admin: 7 days + extension",
    "admin: 30 days + customer number",
    "admin: 1 day + number (old `number`)",
    "supervisor(100): 1 day + customer number",
    "supervisor(100): 7 days + member extension",
    "supervisor(100): 30 days + customer number",
    "admin: all time + customer number",
)


@pytest.mark.parametrize("shape", ["narrow", "wide"])
def test_smoke_run(shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(projection, "NARROW_ROWS", 1_000_000 if shape == "narrow" else 0)
    figures = {f.name: f for f in bench.run(rows=3000, runs=10, seed=3, keep=tmp_path)}
    assert figures["baseline: newest 50, no filter (admin)"].hits == [3000] * 10
    for name in FINDS_ITS_SAMPLE:
        assert min(figures[name].hits) >= 1, (name, figures[name].hits)
    supervisor = figures["supervisor(100): newest 50, no filter"].hits[0]
    assert 0 < supervisor < 3000
    out = capsys.readouterr().out
    assert "p95/base" in out and "supervisor(100): 7 days + member extension" in out
    # A kept catalog is reused, not rebuilt.
    bench.run(rows=3000, runs=2, seed=3, keep=tmp_path)
    assert "reusing the catalog of 3,000 recordings" in capsys.readouterr().out
