"""The admission policy set: what each policy checks, where it applies, and what a violation does.

Layout, one folder per policy as gatekeeper-library keeps them:
    policies/admission/<name>/policy.yaml     metadata below
    policies/admission/<name>/<name>.rego     package edgetrust.admission.<name>, `violation[{"msg": ...}]`
    policies/admission/<name>/*_test.rego     run by `opa test`
A policy is `type: rego` (decided by OPA over input.review and input.parameters, Gatekeeper's contract) or
`type: image-signature` (cosign keys and/or Sigstore keyless identities per image glob).
Mistakes in a policy file are named at load; a webhook with a broken policy set does not start. The format
is edgetrust/schemas/policy.schema.json, checked by edgetrust/bundles/policyfile.py, the same check `trustctl policy
build`, the hub and the syncer run, so the webhook and the builder cannot disagree; a site's parameters file
(`--parameters`) is merged in there too, and a site parameter left empty stops the start.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from admission.errors import ConfigError, ImageReferenceError
from admission.imageref import ImageReference, canonical_image_globs
from admission.images.cosign import VerificationKey
from admission.modes import FailureMode, Mode
from admission.rego.gatekeeper import GatekeeperSet
from admission.rego.gatekeeper import load_directory as load_gatekeeper_directory
from edgetrust.bundles import policyfile
from edgetrust.bundles.errors import PolicyFileError

__all__ = ["FailureMode", "ImagePolicy", "KeylessIdentity", "Match", "Mode", "PolicySet", "RegoLibrary", "RegoPolicy"]

DEFAULT_EXEMPT_NAMESPACES = ("kube-system",)
_E = TypeVar("_E", bound=enum.StrEnum)


@dataclass(frozen=True, slots=True)
class Match:
    kinds: frozenset[str] = frozenset()  # empty: every kind the webhook is sent
    namespaces: tuple[str, ...] = ()  # globs; empty: every namespace
    excluded_namespaces: tuple[str, ...] = ()

    def applies(self, kind: str, namespace: str) -> bool:
        if self.kinds and kind not in self.kinds:
            return False
        if self.namespaces and not any(fnmatch.fnmatchcase(namespace, g) for g in self.namespaces):
            return False
        return not any(fnmatch.fnmatchcase(namespace, g) for g in self.excluded_namespaces)


@dataclass(frozen=True, slots=True)
class RegoPolicy:
    name: str
    mode: Mode
    failure: FailureMode
    match: Match
    rego: Mapping[str, str]  # module id -> source
    parameters: Mapping[str, Any]

    @property
    def package(self) -> str:
        return f"edgetrust.admission.{self.name}"


@dataclass(frozen=True, slots=True)
class RegoLibrary:
    """Shared Rego (e.g. where pod specs live per kind) that policies import; loaded, never queried."""

    name: str
    rego: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class KeylessIdentity:
    issuer: str
    subject: str  # exact SAN (email or URI)


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    name: str
    mode: Mode
    failure: FailureMode
    match: Match
    images: tuple[str, ...]  # globs over canonical registry/repository names, e.g. "ghcr.io/acme/*"
    keys: tuple[VerificationKey, ...] = ()
    trusted_root: Path | None = None
    identities: tuple[KeylessIdentity, ...] = ()
    revision: str = ""  # digest of what the policy trusts: a changed key invalidates cached verdicts

    def covers(self, image: ImageReference) -> bool:
        """Whether the policy applies to an image; both sides are canonical, so no respelling escapes it."""
        return any(fnmatch.fnmatchcase(image.name, pattern) for pattern in self.images)


@dataclass(frozen=True, slots=True)
class PolicySet:
    rego: tuple[RegoPolicy, ...] = ()
    images: tuple[ImagePolicy, ...] = ()
    libraries: tuple[RegoLibrary, ...] = ()
    gatekeeper: GatekeeperSet = field(default_factory=GatekeeperSet)
    exempt_namespaces: tuple[str, ...] = DEFAULT_EXEMPT_NAMESPACES
    revision: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No policy, image policy or constraint at all (shared Rego libraries decide nothing)."""
        return not self.rego and not self.images and not self.gatekeeper.constraints

    def exempt(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, g) for g in self.exempt_namespaces)

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        exempt_namespaces: Sequence[str] = DEFAULT_EXEMPT_NAMESPACES,
        gatekeeper_dir: Path | None = None,
        allow_empty: bool = False,
        parameters: Path | None = None,
    ) -> PolicySet:
        """Every policy under `directory` (and Gatekeeper's under `gatekeeper_dir`), with the site's parameters
        file (`parameters`) merged in.

        A set with no policy at all is refused unless `allow_empty`: an empty or mistyped directory would
        otherwise admit everything, privileged and unsigned pods included, and look like a working webhook.
        """
        if not directory.is_dir():
            raise ConfigError(f"policy directory {directory} does not exist")
        if gatekeeper_dir is not None and not gatekeeper_dir.is_dir():
            raise ConfigError(f"Gatekeeper directory {gatekeeper_dir} does not exist")
        rego: list[RegoPolicy] = []
        images: list[ImagePolicy] = []
        libraries: list[RegoLibrary] = []
        digest = hashlib.sha256()
        try:
            site = policyfile.load_site(parameters) if parameters is not None else None
            metas = policyfile.check_directory(directory, site)
        except PolicyFileError as exc:
            raise ConfigError(str(exc)) from None
        if parameters is not None:
            digest.update(parameters.read_bytes())
        for meta_path in sorted(directory.glob("*/policy.yaml")):
            digest.update(meta_path.read_bytes())
            for source in sorted(meta_path.parent.glob("*.rego")):
                digest.update(source.read_bytes())
            policy = load_policy(meta_path, metas[meta_path])
            if isinstance(policy, RegoPolicy):
                rego.append(policy)
            elif isinstance(policy, ImagePolicy):
                images.append(policy)
            else:
                libraries.append(policy)
        names = [p.name for p in rego] + [p.name for p in images]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"policy names used twice: {', '.join(duplicates)}")
        gatekeeper = GatekeeperSet()
        if gatekeeper_dir is not None:
            for path in sorted(gatekeeper_dir.rglob("*.y*ml")):
                digest.update(path.read_bytes())
            gatekeeper = load_gatekeeper_directory(gatekeeper_dir)
            clash = sorted({c.name for c in gatekeeper.constraints} & set(names))
            if clash:
                raise ConfigError(f"constraint names also used by policies: {', '.join(clash)}")
        loaded = cls(
            rego=tuple(rego),
            images=tuple(images),
            libraries=tuple(libraries),
            gatekeeper=gatekeeper,
            exempt_namespaces=tuple(exempt_namespaces),
            revision=digest.hexdigest()[:16],
        )
        if loaded.empty and not allow_empty:
            where = f"{directory}" + (f" and {gatekeeper_dir}" if gatekeeper_dir is not None else "")
            raise ConfigError(
                f"no admission policy in {where} (no */policy.yaml with a policy, no Gatekeeper constraint); "
                "refusing to start a webhook that would admit everything (unsafe_allow_empty_policy_set overrides)"
            )
        return loaded


def load_policy(meta_path: Path, meta: Mapping[str, Any] | None = None) -> RegoPolicy | ImagePolicy | RegoLibrary:
    """One policy; `meta` is its policy.yaml as policyfile.check_directory gave it (the site's values merged),
    else the file is read and checked alone."""
    where = str(meta_path)
    try:
        if meta is None:
            meta = policyfile.read(meta_path)
            policyfile.check_site_parameters(meta, where, policyfile.policy_name(meta, meta_path.parent.name, where))
        name = policyfile.policy_name(meta, meta_path.parent.name, where)
    except PolicyFileError as exc:
        raise ConfigError(str(exc)) from None
    mode = _enum(Mode, meta.get("mode", "enforce"), where, "mode")
    failure = _enum(FailureMode, meta.get("failure", "closed"), where, "failure")
    match = _match(meta.get("match") or {}, where)
    kind = meta.get("type", "rego")
    if kind in ("rego", "library"):
        modules = {f"{name}/{p.name}": p.read_text() for p in sorted(meta_path.parent.glob("*.rego"))}
        modules = {k: v for k, v in modules.items() if not k.endswith("_test.rego")}
        if not modules:
            raise ConfigError(f"{where}: a {kind} policy needs a .rego file beside policy.yaml")
        if kind == "library":
            return RegoLibrary(name, modules)
        return RegoPolicy(name, mode, failure, match, modules, dict(meta.get("parameters") or {}))
    if kind == "image-signature":
        return _image_policy(meta, meta_path.parent, name, mode, failure, match, where)
    raise ConfigError(f"{where}: type {kind!r} is not rego, library or image-signature")


def _image_policy(
    meta: Mapping[str, Any], base: Path, name: str, mode: Mode, failure: FailureMode, match: Match, where: str
) -> ImagePolicy:
    patterns = meta.get("images")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{where}: images must be a non-empty list of globs")
    globs: list[str] = []
    for pattern in patterns:
        try:
            globs.extend(canonical_image_globs(pattern))
        except ImageReferenceError as exc:
            raise ConfigError(f"{where}: images: {exc}") from None
    revision = hashlib.sha256(json.dumps(patterns).encode())
    keys: list[VerificationKey] = []
    for entry in meta.get("keys") or []:
        path = base / str(entry)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: key {entry!r}: {exc}") from exc
        keys.append(VerificationKey.from_pem(str(entry), pem))
        revision.update(pem)
    trusted_root, identities = None, []
    keyless = meta.get("keyless")
    if keyless is not None:
        if not isinstance(keyless, dict) or "trustedRoot" not in keyless or not keyless.get("identities"):
            raise ConfigError(f"{where}: keyless needs trustedRoot and identities")
        trusted_root = base / str(keyless["trustedRoot"])
        if not trusted_root.is_file():
            raise ConfigError(f"{where}: trusted root {trusted_root} does not exist")
        revision.update(trusted_root.read_bytes())
        for identity in keyless["identities"]:
            if not isinstance(identity, dict) or not identity.get("issuer") or not identity.get("subject"):
                raise ConfigError(f"{where}: each keyless identity needs issuer and subject")
            identities.append(KeylessIdentity(str(identity["issuer"]), str(identity["subject"])))
            revision.update(f"{identity['issuer']}\0{identity['subject']}".encode())
    if not keys and not identities:
        raise ConfigError(f"{where}: an image-signature policy needs keys or keyless identities")
    return ImagePolicy(
        name=name,
        mode=mode,
        failure=failure,
        match=match,
        images=tuple(dict.fromkeys(globs)),
        keys=tuple(keys),
        trusted_root=trusted_root,
        identities=tuple(identities),
        revision=revision.hexdigest()[:16],
    )


def _enum(cls: type[_E], value: Any, where: str, what: str) -> _E:
    try:
        return cls(value)  # the schema allowed only these spellings
    except ValueError:
        raise ConfigError(f"{where}: {what} {value!r} is not one of {[m.value for m in cls]}") from None


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: match must be a mapping")

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: match.{key} must be a list of strings")
        return tuple(value)

    return Match(
        kinds=frozenset(strings("kinds")),
        namespaces=strings("namespaces"),
        excluded_namespaces=strings("excludedNamespaces"),
    )
