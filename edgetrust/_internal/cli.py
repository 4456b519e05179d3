"""What every edgetrust command line agrees on, written once: the spelling of the flags the four CLIs share,
usage errors, error lines and exit codes.

- The hub is `--hub URL` everywhere; verification keys `--verification-key ID=FILE|FILE|DIR` (repeatable);
  listen addresses `--listen HOST:PORT`; `--json` on every command that prints a result. Old spellings stay
  accepted as hidden aliases (charts and scripts keep working), named in the help of the new flag.
- Errors go to stderr as one line, `<prog>: <message>`, argparse's own usage errors included.
- Exit codes: 0 ok, 1 refused or a failed check, 2 usage (the command line, or a file it names, cannot be
  used), 3 unreachable (the hub, the registry, a local agent: nothing was decided).

Only the standard library here: a device's `trustctl enroll --help` imports this and nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    """The command line (or a file it names) cannot be used: the caller prints it and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one stderr line (`<prog>: <message>`), exit 2, and required options that
    may be given under a hidden alias (argparse's own `required=True` knows only one spelling)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._required_any: list[tuple[str, tuple[str, ...]]] = []
        self._given: list[str] = []

    def require(self, dest: str, *spellings: str) -> None:
        """One of `spellings` (a flag and its aliases, all storing into `dest`) must be given."""
        self._required_any.append((dest, spellings))

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(args) if args is not None else sys.argv[1:]
        parsed, extras = super().parse_known_args(args, namespace)
        missing = [spellings[0] for dest, spellings in self._required_any if getattr(parsed, dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        prefix = "the following arguments are required: "
        if message.startswith(prefix):  # argparse's own list, and the ones only this class knows are required
            given = {arg.split("=", 1)[0] for arg in self._given}
            ours = [s[0] for _, s in self._required_any if not given & set(s) and s[0] not in message]
            message = prefix + ", ".join([*ours, message[len(prefix) :]])
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: str) -> str:
    """A message as one line: a multi-line diagnostic joined with '; '."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(prog: str, message: object, code: int) -> int:
    """Say `<prog>: <message>` on stderr, one line (a JSON log line under a daemon's `--log-format json`), and
    return `code` (for `return fail(...)`)."""
    from edgetrust._internal import logs  # standard library only, like this module

    logs.fail(prog, one_line(str(message)))
    return code


def _aliases_text(aliases: Iterable[str]) -> str:
    names = list(aliases)
    return f" (old spelling{'s' if len(names) > 1 else ''}, still accepted: {', '.join(names)})" if names else ""


def add_hub(
    parser: Parser, *, aliases: Sequence[str] = (), required: bool = True, help: str = "trustd URL, https://HOST:PORT"
) -> None:
    """`--hub URL` (stored as `args.hub`); `aliases` are accepted and hidden."""
    parser.add_argument("--hub", metavar="URL", default=None, help=help + _aliases_text(aliases))
    for alias in aliases:
        parser.add_argument(alias, dest="hub", metavar="URL", help=argparse.SUPPRESS)
    if required:
        parser.require("hub", "--hub", *aliases)


def add_verification_keys(
    parser: Parser, *, aliases: Sequence[str] = (), help: str = "publisher's bundle verification key"
) -> None:
    """`--verification-key ID=FILE|FILE|DIR`, repeatable (stored as the list `args.verification_keys`)."""
    parser.add_argument(
        "--verification-key",
        action="append",
        dest="verification_keys",
        metavar="ID=FILE|FILE|DIR",
        help=help
        + ": ID=FILE, or a PEM FILE known by its name without .pem, or a DIR of them; repeatable"
        + _aliases_text(aliases),
    )
    for alias in aliases:
        parser.add_argument(alias, action="append", dest="verification_keys", help=argparse.SUPPRESS)


def verification_key_files(specs: Sequence[str] | None) -> dict[str, Path]:
    """Key id -> PEM file for every `--verification-key`; a key named twice, or a path that is not there, is a
    usage error (never the first or the last one silently)."""
    found: dict[str, Path] = {}

    def add(key_id: str, path: Path) -> None:
        if not key_id:
            raise UsageError(f"--verification-key {path}: the key id is empty")
        if key_id in found and found[key_id] != path:
            raise UsageError(f"--verification-key: key id {key_id!r} is given twice ({found[key_id]}, {path})")
        found[key_id] = path

    for spec in specs or ():
        key_id, sep, rest = spec.partition("=")
        path = Path(rest if sep else spec)
        if sep:
            if not path.is_file():
                raise UsageError(f"--verification-key {spec}: {path} is not a file")
            add(key_id, path)
        elif path.is_dir():
            pems = sorted(path.glob("*.pem"))
            if not pems:
                raise UsageError(f"--verification-key {spec}: no *.pem file in the directory")
            for pem in pems:
                add(pem.stem, pem)
        elif path.is_file():
            add(path.stem, path)
        else:
            raise UsageError(f"--verification-key {spec}: no such file or directory")
    return found


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (the default host), as argparse's `type`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def add_listen(
    parser: Parser, *, default: str, host_aliases: Sequence[str] = (), port_aliases: Sequence[str] = ()
) -> None:
    """`--listen HOST:PORT` (read back with `listen_of`); the old separate host and port flags hidden."""
    parser.add_argument(
        "--listen",
        type=listen_address,
        metavar="HOST:PORT",
        help=f"address to listen on (default {default})" + _aliases_text([*host_aliases, *port_aliases]),
    )
    for alias in host_aliases:
        parser.add_argument(alias, dest="listen_host", help=argparse.SUPPRESS)
    for alias in port_aliases:
        parser.add_argument(alias, dest="listen_port", type=int, help=argparse.SUPPRESS)


def listen_of(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """(host, port) from `--listen` or the old flags; None where neither was given (the settings' default)."""
    listen: tuple[str, int] | None = getattr(args, "listen", None)
    host: str | None = getattr(args, "listen_host", None)
    port: int | None = getattr(args, "listen_port", None)
    if listen is None:
        return host, port
    if host is not None or port is not None:
        raise UsageError("give --listen HOST:PORT, or the old host and port flags, not both")
    return listen[0] or None, listen[1]


def add_json(parser: Parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output: one JSON document on stdout")
