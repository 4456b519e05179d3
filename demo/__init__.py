"""`make demo`: every plane built so far, end to end on this machine, with real parts (see README)."""
