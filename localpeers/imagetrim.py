"""What the edgetrust image leaves out, and why: the list that keeps it under the issue's 200 MB.

Built naively (Debian's essential variant, every wheel the deployables' extras pull in) the image is 302 MiB
unpacked; with these cuts 185 MiB (194 MB). Each cut below names what it removes, what would have used it, and
why none of the four entry points does (trustd, trustctl/the node agent, edgetrust-admission, edgetrust-syncer).
tests/integration/images imports every module of the shipped packages in the image, as its user, on a read-only
root, and runs ldd on every ELF file left: a cut that breaks a deployable fails there. Each cut alone, on the
302 MiB image (MiB unpacked): the generated kubernetes client -38, native code stripped -27, Debian tools, perl
and gconv -24, unused Python packages -13 (-15 with uvicorn's extras, no longer asked for in pyproject.toml),
psycopg's bundled libraries -9; libstdc++ had to be added (+2.3: grpc could not load without it).

Dev-only (images are built from a checkout), hence under localpeers/, never imported by shipped code.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

SITE = "usr/local/lib/python3.11/dist-packages"

# Pulled in by usrmerge (the full perl) and tpm-udev (udev rules, for hosts, not containers).
PURGE = (
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "libperl5.36",
    "perl-modules-5.36",
    "tpm-udev",
    "udev",
)
# Essential or required in Debian, for a system people log into; in a container nothing logs in, mounts or
# manages users. login/passwd/util-linux held every setuid-root program of the base (su, passwd, chsh, newgrp,
# unix_chkpwd, ...): with them gone the image has none. Their maintainer scripts source debconf, which is perl:
# purged while perl-base is still there.
PURGE_ESSENTIAL = (
    "login",
    "passwd",
    "adduser",
    "util-linux",
    "util-linux-extra",
    "libpam-modules",
    "libpam-modules-bin",
    "libpam-runtime",
    "libsemanage2",
    "libsemanage-common",
    "libsepol2",
    "findutils",
    "ncurses-bin",
)
# Last, in one dpkg run: dpkg looks for `diff` on PATH before it does anything, and debconf needs perl. With
# them, bsdutils (logger, script, wall) and the libraries only it and the purged tools linked (systemd's, gcrypt,
# util-linux's): tests/integration/images runs ldd on every ELF file left, so a library still needed fails there.
# Kept: dash and bash (the node agent's init container runs `sh -c`), coreutils, sed, grep, tar, gzip, dpkg and
# its database (what image scanners read), libc-bin, openssl (its /etc/ssl/openssl.cnf is Debian's TLS policy).
PURGE_LAST = (
    "perl-base",
    "diffutils",
    "bsdutils",
    "libsystemd0",
    "libgcrypt20",
    "libgpg-error0",
    "libmount1",
    "libblkid1",
    "libsmartcols1",
    "libudev1",
    "libkmod2",
)

# Python distributions the extras pull in that no deployable imports, uninstalled after pip installed them:
# - rich, Pygments, markdown-it-py, mdurl: sigstore's CLI (`sigstore ...`) and httpx's CLI only; httpx imports its
#   CLI only when they are installed (`httpx/__init__.py`), and sigstore's library never imports rich.
# - psycopg-binary: psycopg's wheel with its own libpq, OpenSSL, Kerberos and LDAP (10 MiB); the image has
#   psycopg-c instead, compiled here against Debian's libpq5 (psycopg's advice for production), same speed.
LEFT_OUT_DISTRIBUTIONS = ("rich", "Pygments", "markdown-it-py", "mdurl", "psycopg-binary")
# Their console scripts go with them; these are what pip leaves of the ones no deployable runs.
LEFT_OUT_SCRIPTS = ("sigstore", "httpx", "pygmentize", "markdown-it")

# The kubernetes client's generated API classes and models, for the sync client and kubernetes.aio (38 MiB of
# 41). edgetrust/_internal/kube.py uses kubernetes.aio's ApiClient, Configuration and config loaders with plain
# JSON bodies, never a generated class; the packages' `__init__` files stay (they import their members lazily),
# so `kubernetes.aio.client` imports, and only a lookup of a generated class fails (ModuleNotFoundError).
GENERATED = (
    "kubernetes/client/api",
    "kubernetes/client/models",
    "kubernetes/aio/client/api",
    "kubernetes/aio/client/models",
)

# Left by dpkg, debconf and mmdebstrap, or read by nothing that runs here: glibc's iconv modules (Python has its
# own codecs; UTF-8 and ASCII are built into glibc), the stdlib's test support and pydoc's topic texts.
REMOVE_AFTER = (
    "var/cache/debconf",
    "var/cache/ldconfig/aux-cache",
    "var/lib/apt",
    "var/cache/apt",
    "var/log",
    "usr/share/doc-base",
    "usr/share/bug",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/pydoc_data",
)

Chroot = Callable[..., str]


def purge_debian(chroot: Chroot) -> None:
    """Purge the packages above in the order their maintainer scripts allow."""
    chroot("dpkg", "--purge", "--force-depends", *PURGE, what="dpkg --purge (perl, udev)")
    force = ("--force-remove-essential", "--force-depends")
    chroot("dpkg", "--purge", *force, *PURGE_ESSENTIAL, what="dpkg --purge (login, passwd, util-linux, pam)")
    chroot("dpkg", "--purge", *force, *PURGE_LAST, what="dpkg --purge (perl-base, diffutils, orphaned libraries)")


def leave_out_generated(root: Path) -> None:
    """Delete the generated kubernetes modules, keeping each package's `__init__.py`."""
    for package in GENERATED:
        folder = root / SITE / package
        for entry in folder.iterdir():
            if entry.name == "__init__.py":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def strip_native(root: Path, strip: str) -> int:
    """Strip symbol tables and debug info from the wheels' shared objects (the dynamic symbols stay: they are
    what the interpreter and the loader look up). Returns the bytes saved. Many manylinux wheels ship unstripped:
    uvloop's loop module is 13.6 MiB with its symbols, 1.7 MiB without."""
    saved = 0
    for path in sorted((root / SITE).rglob("*.so*")):
        if path.is_symlink() or not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
            continue
        before = path.stat().st_size
        done = subprocess.run([strip, "--strip-unneeded", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"strip {path.relative_to(root)} failed: {done.stderr.strip()}")
        saved += before - path.stat().st_size
    return saved


def remove_after(root: Path) -> None:
    for relative in REMOVE_AFTER:
        target = root / relative
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
