"""Push the built images to a registry and sign them (`hack/build-images --push HOST [--sign-key KEY]`).

The images leave this machine's build folder only through here: the pinned oras copies each OCI layout to
`HOST/<prefix>/<name>:<tag>`, the digest the registry answers must be the built one (else nothing is signed),
and the pinned cosign signs that digest with the given key, offline (`--tlog-upload=false`: no Rekor is
reachable here; a verifier must then pass `--insecure-ignore-tlog`, or trust the key alone, which is what
edgetrust's webhook does for key-based policies). The signature is verified with the key's public half before
the push counts, and what was pushed (references, digests, the signature manifests' digests, the public key's
fingerprint) is recorded in images.json under "pushed".

A key must be 0600 (or stricter) and owned by the user building: cosign keys are encrypted with
COSIGN_PASSWORD, but a readable key file is still a key anyone on the machine may try. The password is taken
from the environment and never printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localpeers.peers import peers_cache, pinned


class PushError(RuntimeError):
    """A push or a signature failed; the message says which image and what the tool printed."""


def _tool(name: str) -> str:
    module, version, binary = pinned()[name]
    path = peers_cache() / f"{name}-{version}" / binary
    if not os.access(path, os.X_OK):
        raise PushError(f"{name} {version} ({module}) is not built: run hack/install-peers {name}")
    return str(path)


@dataclass(frozen=True)
class Target:
    """Where and how to push: the registry's host[:port], a repository prefix, its CA (for a private TLS
    registry) and the cosign key to sign with (None: push only)."""

    registry: str
    prefix: str = "edgetrust"
    ca_file: Path | None = None
    sign_key: Path | None = None

    def reference(self, short: str, tag: str) -> str:
        return f"{self.registry}/{self.prefix}/{short}:{tag}"


def check_key(key: Path) -> None:
    """Fail closed on a key file others may read or write, or that is not a regular file of this user."""
    try:
        st = key.stat()
    except OSError as exc:
        raise PushError(f"signing key {key}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise PushError(f"signing key {key} is not a regular file")
    if st.st_mode & 0o077:
        raise PushError(f"signing key {key} has mode {stat.filemode(st.st_mode)}: chmod 600 {key} (0600 or stricter)")
    if st.st_uid != os.geteuid():
        raise PushError(f"signing key {key} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")


def _env(target: Target) -> dict[str, str]:
    env = dict(os.environ)
    if target.ca_file is not None:
        env["SSL_CERT_FILE"] = str(target.ca_file)  # cosign's registry client reads it; oras gets --ca-file
    return env


def _run(argv: Sequence[str], *, what: str, env: dict[str, str], cwd: Path) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PushError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise PushError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-3000:]}")
    return done.stdout


def _oras_tls(target: Target, flag: str) -> list[str]:
    return [flag, str(target.ca_file)] if target.ca_file is not None else []


def public_key(key: Path, work: Path, env: dict[str, str]) -> Path:
    """The public half of a cosign key (`cosign public-key`), written beside the report."""
    out = work / "cosign.pub"
    out.write_text(
        _run([_tool("cosign"), "public-key", "--key", str(key)], what="cosign public-key", env=env, cwd=work)
    )
    return out


def push_image(target: Target, short: str, built: dict[str, Any], *, env: dict[str, str], work: Path) -> dict[str, str]:
    """Copy one OCI layout to the registry; the registry's digest must be the built one."""
    oras = _tool("oras")
    tag = str(built["name"]).rpartition(":")[2]
    reference = target.reference(short, tag)
    layout = f"{built['oci_layout']}:{tag}"
    tls = _oras_tls(target, "--to-ca-file")
    _run([oras, "cp", *tls, "--from-oci-layout", layout, reference], what=f"oras cp {short}", env=env, cwd=work)
    resolve = [oras, "resolve", *_oras_tls(target, "--ca-file"), reference]
    pushed = _run(resolve, what=f"oras resolve {reference}", env=env, cwd=work).strip()
    if pushed != built["digest"]:
        raise PushError(f"{reference}: the registry answers {pushed}, the build made {built['digest']}; not signed")
    repository = reference.rpartition(":")[0]
    return {"reference": reference, "digest": pushed, "pinned": f"{repository}@{pushed}"}


def sign_image(target: Target, pushed: dict[str, str], public: Path, *, env: dict[str, str], work: Path) -> str:
    """Sign the pushed digest (never a tag) and verify it with the public key; returns the signature manifest's
    digest (cosign's `sha256-<digest>.sig` tag)."""
    if target.sign_key is None:
        raise PushError("no signing key given")
    cosign = _tool("cosign")
    pinned_reference = pushed["pinned"]
    sign = [cosign, "sign", "--yes", "--key", str(target.sign_key), "--tlog-upload=false", pinned_reference]
    _run(sign, what=f"cosign sign {pinned_reference}", env=env, cwd=work)
    verify = [cosign, "verify", "--key", str(public), "--insecure-ignore-tlog=true", pinned_reference]
    _run(verify, what=f"cosign verify {pinned_reference}", env=env, cwd=work)
    repository = pinned_reference.partition("@")[0]
    signature_tag = f"{repository}:{pushed['digest'].replace(':', '-')}.sig"
    resolve = [_tool("oras"), "resolve", *_oras_tls(target, "--ca-file"), signature_tag]
    return _run(resolve, what=f"oras resolve {signature_tag}", env=env, cwd=work).strip()


def push(manifest: Path, target: Target) -> dict[str, Any]:
    """Push (and sign) every image of `manifest` (an images.json); records the result in it and returns it."""
    if target.sign_key is not None:
        check_key(target.sign_key)
    report: dict[str, Any] = json.loads(manifest.read_text())
    work = manifest.parent
    env = _env(target)
    public = public_key(target.sign_key, work, env) if target.sign_key is not None else None
    images: dict[str, Any] = {}
    for short, built in sorted(report["images"].items()):
        pushed: dict[str, Any] = push_image(target, short, built, env=env, work=work)
        if public is not None:
            pushed["signature_digest"] = sign_image(target, pushed, public, env=env, work=work)
        images[short] = pushed
    record: dict[str, Any] = {"registry": target.registry, "images": images, "signed": public is not None}
    if public is not None:
        record["public_key"] = str(public)
        record["public_key_sha256"] = hashlib.sha256(public.read_bytes()).hexdigest()
    report.setdefault("pushed", {})[target.registry] = record
    partial = manifest.with_suffix(".json.part")
    partial.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    partial.replace(manifest)
    return record
