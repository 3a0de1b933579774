"""Version 1 of the callrec contracts."""
