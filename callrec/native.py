"""Compiled twins of pure-Python hot modules, used only while they match their source.

Capture's live encoding spends about a third of its CPU beyond libopus in Python, most
of it in the RTP timeline (services/capture/timeline.py: a few operations per packet,
100 packets a second per call), and its receive path (services/capture/receiver.py)
runs its interpreter for every datagram. mypyc (part of mypy) compiles that same typed source
to a C extension: one source, so one rule, and the interpreted module stays the
fallback wherever no compiler is installed.

The build goes into the virtualenv (``.venv/native``), never beside the sources, with
the sha256 of each source it compiled. :func:`install` (run by the packages that hold
compiled modules, before any of their modules is imported) loads a compiled module
only when its source is unchanged since the build, so an edited source is never
shadowed by a stale build: it runs interpreted until the next ``scripts/setup-env``.

    .venv/bin/python -m callrec.native build     # what scripts/setup-env runs
    .venv/bin/python -m callrec.native status
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Literal

from callrec.store import sha256_file

REPO = Path(__file__).resolve().parent.parent
NATIVE_MODULES = ("services.capture.timeline", "services.capture.receiver")
"""The modules compiled: the per-packet work of capture (its receive path, 40,000
datagrams a second at 400 calls, and its live step path)."""

GROUP = "callrec_native"
"""mypyc's name for the shared library the compiled modules live in."""

STAMP = "stamp.json"
DISABLE_ENV = "CALLREC_NATIVE"
"""``CALLREC_NATIVE=0``: run every module interpreted (a bisecting aid)."""

NativeState = Literal["compiled", "stale", "not built", "disabled"]


def native_dir() -> Path:
    """Where the build lives: the running virtualenv's ``native`` directory."""
    override = os.environ.get("CALLREC_NATIVE_DIR")
    return Path(override) if override else Path(sys.prefix) / "native"


def source_path(module: str) -> Path:
    return REPO.joinpath(*module.split(".")).with_suffix(".py")


def source_hash(module: str) -> str:
    return sha256_file(source_path(module))


def compiler() -> str | None:
    """The C compiler a build would use (``$CC``, else ``cc``), None without one."""
    return shutil.which(os.environ.get("CC", "cc"))


def _built_hashes(directory: Path) -> dict[str, str]:
    try:
        data = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("python") != sys.implementation.cache_tag:
        return {}  # built for another interpreter
    modules = data.get("modules")
    return {str(k): str(v) for k, v in modules.items()} if isinstance(modules, dict) else {}


def states(directory: Path | None = None) -> dict[str, NativeState]:
    """What each module in NATIVE_MODULES would run as."""
    if os.environ.get(DISABLE_ENV) == "0":
        return dict.fromkeys(NATIVE_MODULES, "disabled")
    built = _built_hashes(directory or native_dir())
    out: dict[str, NativeState] = {}
    for module in NATIVE_MODULES:
        if module not in built:
            out[module] = "not built"
        else:
            out[module] = "compiled" if built[module] == source_hash(module) else "stale"
    return out


def _extension_files(directory: Path, modules: set[str]) -> dict[str, Path]:
    """Where the build puts ``modules`` and mypyc's shared library, by dotted name."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # what setuptools names them
    return {name: directory.joinpath(*name.split(".")[:-1], name.rpartition(".")[2] + suffix)
            for name in (*sorted(modules), f"{GROUP}__mypyc")}


class _NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules (and mypyc's shared library) in the build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        origin = self.files.get(fullname)
        if origin is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(origin))
        return importlib.util.spec_from_file_location(fullname, origin, loader=loader)


_installed: dict[str, NativeState] | None = None


def install() -> dict[str, NativeState]:
    """Route the imports of the compiled modules whose source is unchanged to the
    build; idempotent. Returns each module's state (for the service's start log)."""
    global _installed
    if _installed is not None:
        return _installed
    directory = native_dir()
    result = states(directory)
    compiled = {m for m, state in result.items() if state == "compiled"}
    if compiled:
        files = _extension_files(directory, compiled)
        if not all(path.is_file() for path in files.values()):  # a stamp without its files
            result.update(dict.fromkeys(compiled, "not built"))
        else:
            sys.meta_path.insert(0, _NativeFinder(files))
    _installed = result
    return result


def load_source(module: str) -> ModuleType:
    """A fresh interpreted copy of ``module`` (named ``<module>__source``, not in
    sys.modules), whatever the import system runs: for tests that compare the two or
    patch internals, which compiled classes do not let them do."""
    package, _, _ = module.rpartition(".")
    spec = importlib.util.spec_from_file_location(
        f"{module}__source", source_path(module),
        loader=importlib.machinery.SourceFileLoader(f"{module}__source",
                                                    str(source_path(module))))
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    copy.__package__ = package  # its relative imports resolve as the original's
    sys.modules[spec.name] = copy  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(copy)
    finally:
        del sys.modules[spec.name]
    return copy


def build(directory: Path | None = None) -> dict[str, NativeState]:
    """Compile NATIVE_MODULES into ``directory`` (the build is replaced as a whole)."""
    from mypyc.build import mypycify  # build-time only
    from setuptools import Distribution

    target = directory or native_dir()
    hashes = {module: source_hash(module) for module in NATIVE_MODULES}
    with tempfile.TemporaryDirectory(prefix="callrec-native-") as work:
        here = os.getcwd()
        os.chdir(REPO)  # mypyc names modules by their paths from the root
        try:
            extensions = mypycify([str(source_path(m).relative_to(REPO)) for m in hashes],
                                  opt_level="3", group_name=GROUP,
                                  target_dir=str(Path(work) / "c"))
            out = Path(work) / "lib"
            dist = Distribution({"name": GROUP, "ext_modules": extensions})
            command = dist.get_command_obj("build_ext")
            command.build_lib = str(out)
            command.build_temp = str(Path(work) / "tmp")
            dist.run_command("build_ext")
        finally:
            os.chdir(here)
        (out / STAMP).write_text(json.dumps(
            {"python": sys.implementation.cache_tag, "modules": hashes}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(out, target)
    return states(target)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        if compiler() is None:
            print("callrec.native: no C compiler, the modules run interpreted")
            return 0
        if all(state == "compiled" for state in states().values()):
            return 0  # up to date
        try:
            result = build()
        except (Exception, SystemExit) as exc:  # mypyc exits on a type error
            # A node without the build still records: interpreted, at more CPU. The
            # suite's test_native finds the missing build where a compiler is.
            print(f"callrec.native: build failed ({type(exc).__name__}: {exc}); "
                  "the modules run interpreted", file=sys.stderr)
            return 0
    elif args[:1] == ["status"]:
        result = states()
    else:
        print("usage: python -m callrec.native build|status", file=sys.stderr)
        return 2
    for module, state in result.items():
        print(f"{module}: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
