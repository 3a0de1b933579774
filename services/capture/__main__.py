"""Entry point: `python -m services.capture` (started by `callrec up`).

Capture runs on uvloop: its event loop is the RTP receive path (a reader callback per
stream socket), and uvloop dispatches ready sockets for a fraction of the default
loop's cost. The other services keep asyncio's default loop.
"""

import uvloop

from callrec.service import run

from .service import main

if __name__ == "__main__":
    uvloop.install()
    run("capture", main)
