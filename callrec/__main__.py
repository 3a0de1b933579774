"""`python -m callrec` is the `callrec` command."""

import sys

from .cli import main

sys.exit(main())
