"""Suite-wide hooks."""

from __future__ import annotations

from typing import Any

from tests.support import screens


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the web app's screenshots of this run are, for a person to look at."""
    folder = screens.taken()
    if folder is not None:
        terminalreporter.write_line(f"screenshots of the web app: {folder}")
