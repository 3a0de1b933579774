"""Entry point: `python -m services.signaling` (started by `callrec up`).

Signaling runs on uvloop, as capture does: per SIP leg its event loop sends datagrams
(`sendto`), writes RPCs and events to NATS and wakes tasks, and uvloop does each of
these for a fraction of the default loop's cost (a CUCM leg's set-up is mostly loop
and socket work once its SIP is parsed).
"""

import uvloop

from callrec.service import run

from .service import main

if __name__ == "__main__":
    uvloop.install()
    run("signaling", main)
