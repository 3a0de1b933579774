"""callrec.fdlimit: the soft limit on open files raised to what a service needs, never
lowered, never past the hard limit. Each case runs in a child process, whose limits
the test may change."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
from callrec.fdlimit import raise_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print(raise_open_files(300), raise_open_files(100), raise_open_files(), hard)
"""


def test_the_soft_limit_goes_up_to_what_is_wanted_and_never_down() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    wanted, lower, highest, hard = (int(v) for v in out)
    assert wanted == 300  # raised to what was asked
    assert lower == 300  # a smaller wish never lowers it
    assert highest == hard  # None: as far as the hard limit
