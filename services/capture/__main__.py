"""Entry point: `python -m services.capture` (started by `callrec up`).

Capture runs on uvloop: its event loop is the RTP receive path (every stream socket
read through one epoll set, receiver.BatchReader), and uvloop runs its timers and
callbacks for a fraction of the default loop's cost (signaling does the same for
its SIP sockets; the other services keep asyncio's default loop).
"""

import uvloop

from callrec.service import run

from .service import main

if __name__ == "__main__":
    uvloop.install()
    run("capture", main)
