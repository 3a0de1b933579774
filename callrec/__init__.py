"""callrec: the small common runtime (config, logging, NATS helpers, storage, CLI).

Services import from here and from `contracts`, never from each other.
"""

__version__ = "0.1.0"
