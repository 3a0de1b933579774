"""Entry point: `python -m services.web` (started by the node supervisor)."""

from callrec.service import run

from .service import main

if __name__ == "__main__":
    run("web", main)
