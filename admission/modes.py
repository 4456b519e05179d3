"""What a violation does (mode) and what an undecidable policy does (failure mode), for every kind of policy."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    ENFORCE = "enforce"  # a violation denies
    WARN = "warn"  # admitted; the violation comes back as a warning to the client
    AUDIT = "audit"  # admitted; logged and counted only
    DRYRUN = "dryrun"  # admitted; recorded in the API server's audit log (auditAnnotations)


class FailureMode(enum.StrEnum):
    CLOSED = "closed"  # cannot decide -> deny (default)
    OPEN = "open"  # cannot decide -> admit with a warning
