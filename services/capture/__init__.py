"""Capture: RTP in, segments on disk, the live Ogg/Opus recording."""

from callrec import native

native.install()  # before any submodule: the RTP timeline may run compiled
