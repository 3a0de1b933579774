"""Entry point: `python -m services.signaling` (started by `callrec up`)."""

from callrec.service import run

from .service import main

if __name__ == "__main__":
    run("signaling", main)
