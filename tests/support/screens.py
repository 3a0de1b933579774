"""Screenshots of the web app's pages, for a person to look at after a test run.

Every test that opens a page calls `shot(page, "name")`; the files land in one folder
per run (`CALLREC_SCREENSHOTS`, or a fresh folder under the system's temp dir) whose
path is printed once, so it shows in pytest's output (`-s`) and in the log.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

_folder: Path | None = None


def folder() -> Path:
    """This run's screenshot folder, created and announced on first use."""
    global _folder
    if _folder is None:
        configured = os.environ.get("CALLREC_SCREENSHOTS")
        if configured:
            _folder = Path(configured)
            _folder.mkdir(parents=True, exist_ok=True)
        else:
            _folder = Path(tempfile.mkdtemp(prefix="callrec-screenshots-"))
        print(f"\nscreenshots of the web app: {_folder}", file=sys.stderr, flush=True)
        print(f"\nscreenshots of the web app: {_folder}", flush=True)
    return _folder


def _path(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
    return folder() / f"{safe}.png"


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    """Save a PNG of `page` (a Playwright sync Page) as `<name>.png`; returns its path."""
    path = _path(name)
    page.screenshot(path=str(path), full_page=full_page)
    return path


async def shot_async(page: Any, name: str, full_page: bool = True) -> Path:
    """`shot` for a Playwright async Page."""
    path = _path(name)
    await page.screenshot(path=str(path), full_page=full_page)
    return path


def taken() -> Path | None:
    """The folder, if any screenshot was taken in this run (for the session summary)."""
    return _folder
