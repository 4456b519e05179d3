"""How every edgetrust daemon logs: one set-up, `--log-format text|json` and `-v`, the same on all of them.

`trustd serve`, `trustctl agent run`, `edgetrust-admission serve` and `edgetrust-syncer run` each had their
own `basicConfig` (two formats between them, and uvicorn's own beside them). A log collector on an edge
cluster wants one shape: with `--log-format json`, one JSON object per line on stderr with `time` (UTC,
RFC 3339), `level`, `logger`, `message`, and `exc_info` when an exception is logged. Only the formatted
message is written, never a record's arguments or extras wholesale, and anything shaped like a secret (a
PEM private key, an `Authorization`/bearer token) is masked in both formats as a last line of defence: no
code path should log one, and if one does, it does not reach the collector.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "edgetrust"
#: the format `configure` set (text until it is called): what `fail` writes
_format = "text"

MASK = "[redacted]"
#: what a secret looks like in a log line, and what it is replaced with
_SECRETS = (
    (
        re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL),
        f"-----PRIVATE KEY {MASK}-----",
    ),
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+)[^\s,;'\"]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{20,}"), rf"\1{MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),  # a JWT (a JWT-SVID)
)


def redact(text: str) -> str:
    """`text` with PEM private keys, Authorization credentials, bearer tokens and JWTs masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, masked."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exc_info), masked."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            line["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            line["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False)


def _rfc3339(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--log-format text|json` and `-v/--verbose` on a daemon's (sub)command.

    Both default to SUPPRESS, so they can sit on a parent parser and on its subcommand without one resetting
    the other; `configure_from` reads whichever was given."""
    parser.add_argument(
        "--log-format", choices=FORMATS, default=argparse.SUPPRESS, help="log lines as text (default) or JSON"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages too"
    )


def configure_from(args: argparse.Namespace, *, stream: TextIO | None = None) -> None:
    """`configure` with what `add_arguments` parsed (text, INFO when not given)."""
    configure(getattr(args, "log_format", "text"), verbose=getattr(args, "verbose", False), stream=stream)


_CHATTY = ("httpx", "httpcore")


def configure(log_format: str = "text", *, verbose: bool = False, stream: TextIO | None = None) -> None:
    """The root logger writes `log_format` lines to stderr at INFO (DEBUG with `verbose`); every logger,
    uvicorn's included (served with `log_config=None`), propagates to it, so all lines have one shape.
    Calling it again replaces the handler it installed before."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    global _format  # one process, one log set-up
    _format = log_format
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == _HANDLER_NAME:  # ours from an earlier call; a test harness's own handlers stay
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # the HTTP clients say every request at INFO (a line per registry or hub call on the webhook's hot path):
    # their warnings and errors only, unless asked for everything
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)


def current() -> tuple[str, bool]:
    """The format and verbosity `configure` set up: what a child process (a trustd worker) sets up again."""
    return _format, logging.getLogger().level <= logging.DEBUG


def fail(prog: str, message: str) -> None:
    """A daemon's last word before it exits non-zero: `prog: message` on stderr, one line, as the CLIs have
    always said it; with `--log-format json`, that line is a JSON log line (level ERROR, logger `prog`), so a
    collector reading JSON gets the reason too."""
    if _format == "json":
        logging.getLogger(prog).error("%s", message)
    else:
        print(f"{prog}: {message}", file=sys.stderr)
