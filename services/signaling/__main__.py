"""Entry point: `python -m services.signaling` (started by `callrec up`).

Signaling runs on uvloop, as capture does: at 400 INVITE legs/s a quarter of its
event loop's time went to the loop itself and its sockets (epoll, a `sendto` per
response, the bus connection's writes), which uvloop does in C.
"""

import uvloop

from callrec.service import run

from .service import main

if __name__ == "__main__":
    uvloop.install()
    run("signaling", main)
