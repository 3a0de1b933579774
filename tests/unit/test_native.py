"""The compiled RTP timeline (callrec/native.py): used where built, never when stale,
and giving exactly what its interpreted source gives."""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from callrec import native
from tests.unit.test_timeline import CODECS, _messy_stream

TIMELINE = "services.capture.timeline"
REPO = Path(__file__).resolve().parents[2]


def _built() -> Path:
    if native.compiler() is None:
        pytest.skip("no C compiler: the timeline runs interpreted here")
    if os.environ.get(native.DISABLE_ENV) == "0":
        pytest.skip("CALLREC_NATIVE=0: this run is of the interpreted timeline")
    return native.native_dir()


@pytest.mark.parametrize("module", native.NATIVE_MODULES)
def test_each_module_runs_compiled_where_a_compiler_is(module: str) -> None:
    """scripts/setup-env built them: a machine with a compiler records with the build."""
    _built()
    assert native.install()[module] == "compiled"
    assert Path(importlib.import_module(module).__file__ or "").suffix == ".so"


def _loaded_from(env: dict[str, str]) -> tuple[str, str]:
    """(the file the timeline was imported from, its state) in a fresh interpreter."""
    code = ("from callrec import native; state = native.install()['" + TIMELINE + "']\n"
            "import services.capture.timeline as t; print(t.__file__); print(state)")
    base = {k: v for k, v in os.environ.items()
            if k not in (native.DISABLE_ENV, "CALLREC_NATIVE_DIR")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**base, **env}).stdout
    path, state = out.splitlines()
    return path, state


def test_an_edited_source_runs_interpreted_until_it_is_built_again(tmp_path: Path) -> None:
    """A build whose source hash no longer matches is never loaded: the edit runs."""
    build = _built()
    copy = tmp_path / "native"
    shutil.copytree(build, copy)
    path, state = _loaded_from({"CALLREC_NATIVE_DIR": str(copy)})
    assert (Path(path).suffix, state) == (".so", "compiled")
    assert Path(path).is_relative_to(copy)

    stamp = json.loads((copy / native.STAMP).read_text())
    stamp["modules"][TIMELINE] = "0" * 64  # as if the source changed since
    (copy / native.STAMP).write_text(json.dumps(stamp))
    path, state = _loaded_from({"CALLREC_NATIVE_DIR": str(copy)})
    assert (path, state) == (str(native.source_path(TIMELINE)), "stale")

    stamp["modules"][TIMELINE] = native.source_hash(TIMELINE)
    stamp["python"] = "cpython-0"  # built for another interpreter
    (copy / native.STAMP).write_text(json.dumps(stamp))
    assert _loaded_from({"CALLREC_NATIVE_DIR": str(copy)})[1] == "not built"


def test_a_stamp_without_its_files_runs_the_source(tmp_path: Path) -> None:
    """What a process starting in the middle of a rebuild sees (the build directory is
    replaced whole: removed, then copied)."""
    build = _built()
    copy = tmp_path / "native"
    copy.mkdir()
    shutil.copy(build / native.STAMP, copy / native.STAMP)
    assert _loaded_from({"CALLREC_NATIVE_DIR": str(copy)}) == (
        str(native.source_path(TIMELINE)), "not built")


def test_no_build_and_switched_off_run_the_source(tmp_path: Path) -> None:
    assert _loaded_from({"CALLREC_NATIVE_DIR": str(tmp_path / "none")}) == (
        str(native.source_path(TIMELINE)), "not built")
    assert _loaded_from({"CALLREC_NATIVE": "0"}) == (
        str(native.source_path(TIMELINE)), "disabled")


@pytest.mark.parametrize("seed", range(8))
def test_the_compiled_timeline_gives_what_its_source_gives(seed: int) -> None:
    """mypyc checks types at run time and compiles some operations natively: on streams
    with loss, jitter, duplicates, SSRC changes, clock resets, codec switches, DTMF and
    garbage, both builds produce the same samples, counters and digits."""
    import services.capture.timeline as running

    source = native.load_source(TIMELINE)
    rng = random.Random(seed)
    records = _messy_stream(rng)
    rate = rng.choice([8000, 16000])
    duration = records[-1][0] + 500
    results = [module.build_channel(records, CODECS, duration, out_rate=rate)
               for module in (running, source)]
    compiled, interpreted = results
    assert np.array_equal(compiled.samples, interpreted.samples)
    assert compiled.samples.any()
    assert str(compiled.stats) == str(interpreted.stats)
    assert str(compiled.dtmf) == str(interpreted.dtmf)
    assert (compiled.first_arrival_ms, compiled.last_arrival_ms) == (
        interpreted.first_arrival_ms, interpreted.last_arrival_ms)


def test_a_failed_build_leaves_the_node_interpreted_not_unable_to_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/node goes on (status 0, a warning) when mypyc or the compiler fails."""
    monkeypatch.setenv("CALLREC_NATIVE_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(shutil, "which", lambda _: "/usr/bin/cc")

    def failing(directory: Path | None = None) -> dict[str, native.NativeState]:
        raise SystemExit("services/capture/timeline.py:1: error: mypyc cannot compile this")

    monkeypatch.setattr(native, "build", failing)
    assert native.main(["build"]) == 0
    assert "build failed" in capsys.readouterr().err
    assert native.states()[TIMELINE] == "not built"
