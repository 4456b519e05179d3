"""A real PKCS#11 token: SoftHSM2 (Debian's `softhsm2`) with its token directory in the test's own folder.

It stands in for the HSM (or cloud KMS) every hub replica shares in production: the hub's keys are made on it
by `trustd ca init` and never leave it. SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) and scans its
tokens when the module is initialised, and python-pkcs11 initialises a module once per process: so after a
token is made, the module already loaded in this process is initialised again (`activate`). Replicas started
as processes inherit `SOFTHSM2_CONF` from `environ()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pkcs11

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
INSTALL = "apt-get install -y softhsm2 (or run hack/install-deps)"


class SoftHSMError(RuntimeError):
    """SoftHSM2 is missing or refused to make a token (the message says which, and how to install it)."""


@dataclass(frozen=True)
class SoftToken:
    """One initialised token: where SoftHSM2 keeps it, its label and its user PIN (in `pin_file`, 0600)."""

    conf: Path
    label: str
    pin: str
    pin_file: Path
    module: Path = MODULE

    def environ(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def settings(self) -> dict[str, object]:
        """The TrustdSettings fields that put a hub's keys on this token."""
        return {"pkcs11_module": self.module, "pkcs11_token": self.label, "pkcs11_pin_file": self.pin_file}

    def activate(self) -> None:
        """Point this process's SoftHSM2 at this token's directory (and see tokens made since it loaded)."""
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        loaded = pkcs11._loaded.get(str(self.module))
        if loaded is not None:
            loaded.reinitialize()


def make_token(directory: Path, label: str = "edgetrust") -> SoftToken:
    """A fresh SoftHSM2 token in `directory` with a random user PIN; `activate()` it before opening it here."""
    tool = shutil.which("softhsm2-util")
    if tool is None or not MODULE.exists():
        raise SoftHSMError(f"SoftHSM2 is not installed: {INSTALL}")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    done = subprocess.run(
        [tool, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", secrets.token_hex(8)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    if done.returncode != 0:
        raise SoftHSMError(f"softhsm2-util --init-token failed: {done.stderr or done.stdout}")
    pin_file = directory / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    return SoftToken(conf=conf, label=label, pin=pin, pin_file=pin_file)
