"""`trustd serve`'s flags, made from TrustdSettings' fields: every setting has a flag, and each flag's help names
its environment variable, so a new setting cannot be added without one (tests/unit/trustd/test_serve_flags.py).

A field's flag is its name in kebab case without the `_s` of a duration (`svid_ttl_s` -> `--svid-ttl`), unless
`SPELLINGS` keeps an older or a shorter one (`--store`, `--ek-roots`, `--fleet`, `--operator`). Durations take
`90s`, `30m`, `8h`, `7d` or plain seconds; their environment variables stay in seconds (`TRUSTD_SVID_TTL_S=28800`).
Lists (`--dns-name`, `--ip`, `--operator`) are repeatable; their environment variables take a JSON list.
The listen address and the publishers' keys use the spellings every edgetrust command shares (`--listen`,
`--verification-key`, edgetrust._internal.cli).
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgetrust._internal.cli import Parser, UsageError, add_listen, add_verification_keys, listen_of
from trustd.server.settings import TrustdSettings

ENV_PREFIX = "TRUSTD_"
#: flags whose spelling is not the field's name: older spellings that charts and scripts use, or shorter ones
SPELLINGS = {
    "store_url": "--store",
    "ek_roots_dir": "--ek-roots",
    "fleet_file": "--fleet",
    "federation_file": "--federation",
    "operators": "--operator",
    "server_dns_names": "--dns-name",
    "server_ip_addresses": "--ip",
}
#: the settings behind the shared `--listen HOST:PORT` and `--verification-key DIR`
LISTEN = ("listen_host", "listen_port")
KEYS = "policy_keys_dir"
#: the settings that say where the trust material is: the data directory, or a PKCS#11 token
TRUST_FLAGS = ("data_dir", "trust_domain", "pkcs11_module", "pkcs11_token", "pkcs11_pin_file")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def env_var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `8h`, `7d` or plain seconds, as seconds (argparse's `type`)."""
    found = _DURATION.fullmatch(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 8h, 7d or seconds, got {text!r}")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def _whole_seconds(text: str) -> int:
    seconds = parse_duration(text)
    if seconds != int(seconds):
        raise argparse.ArgumentTypeError(f"{text!r}: give whole seconds")
    return int(seconds)


def flag_of(field: str) -> str:
    """The flag that sets `field` (`--listen` for the listen host and port, `--verification-key` for the keys)."""
    if field in LISTEN:
        return "--listen"
    if field == KEYS:
        return "--verification-key"
    return SPELLINGS.get(field) or "--" + field.removesuffix("_s").replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """`X | None` -> X; `tuple[str, ...]` stays itself."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def _append_help(parser: Parser, flag: str, text: str) -> None:
    action = parser._option_string_actions[flag]
    action.help = f"{action.help} {text}"


def add_settings_flags(parser: Parser, fields: Iterable[str] | None = None) -> None:
    """A flag for each of `fields` (default: every setting), storing into the field's name (None: not given)."""
    chosen = list(fields) if fields is not None else list(TrustdSettings.model_fields)
    for name in chosen:
        if name in LISTEN:
            continue
        info = TrustdSettings.model_fields[name]
        description = info.description or ""
        if name == KEYS:
            add_verification_keys(parser, aliases=["--policy-keys"], help=f"{description} (trustd serve: one DIR)")
            _append_help(parser, "--verification-key", f"(env {env_var(name)})")
            continue
        flag, annotation = flag_of(name), _base_type(info.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "metavar": flag[2:].upper().replace("-", "_")}
        text = description
        if name.endswith("_s"):
            kwargs["type"] = _whole_seconds if annotation is int else parse_duration
            kwargs["metavar"] = "DURATION"
            text += f"; 90s, 30m, 8h, 7d or seconds; default {info.default:g} s; the env var is in seconds"
        elif typing.get_origin(annotation) is tuple:
            kwargs["action"] = "append"
            replaces = f", replaces the default ({', '.join(info.default)})" if info.default else ""
            text += f"; repeatable{replaces}; the env var takes a JSON list"
        else:
            kwargs["type"] = annotation
            if info.default is not None and annotation is not str:
                text += f"; default {info.default}"
            elif info.default is not None:
                text += f"; default {info.default!r}"
        parser.add_argument(flag, help=f"{text.replace('%', '%%')} (env {env_var(name)})", **kwargs)
    if any(name in LISTEN for name in chosen):
        add_listen(parser, default="127.0.0.1:8443", host_aliases=["--host"], port_aliases=["--port"])
        _append_help(parser, "--listen", f"(env {env_var('listen_host')}, {env_var('listen_port')})")


def _keys_dir(args: argparse.Namespace) -> Path | None:
    """The hub reads its publishers' keys from one directory (settings.policy_keys_dir)."""
    specs: list[str] | None = getattr(args, "verification_keys", None)
    if not specs:
        return None
    if len(specs) != 1 or not Path(specs[0]).is_dir():
        raise UsageError("trustd serve --verification-key takes one directory of publishers' keys (ID.pem)")
    return Path(specs[0])


def settings_from(args: argparse.Namespace) -> TrustdSettings:
    """The settings: what the command line gives, then TRUSTD_* environment variables, then the defaults."""
    overrides: dict[str, Any] = {}
    for name in TrustdSettings.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    host, port = listen_of(args)
    overrides.update({k: v for k, v in (("listen_host", host), ("listen_port", port)) if v is not None})
    keys = _keys_dir(args)
    if keys is not None:
        overrides[KEYS] = keys
    return TrustdSettings(**overrides)


def invalid_settings(exc: ValidationError) -> str:
    """A settings error as one line naming each setting's flag and environment variable."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = f"{name} ({flag_of(name)}, env {env_var(name)})" if name in TrustdSettings.model_fields else name
        problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "invalid setting " + "; ".join(problems)
