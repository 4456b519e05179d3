"""Policy bundles in OPA's format, so that a stock OPA can load what our syncer applies, and the reverse.

    .manifest                                  {"revision", "roots": [...POLICY_ROOTS],
                                                "metadata": {"counter", "commit", "group"}}
    edgetrust/admission/<policy>/<file>.rego   the admission policy library (tests left out)
    edgetrust/gatekeeper/...                   ConstraintTemplates and constraints (YAML, for the webhook)
    edgetrust/networkpolicies/data.json        {"<site class>": [NetworkPolicy, ...]}
    .signatures.json                           OPA's signature (edgetrust/bundles/signing.py)

The hub's revocation list is a second bundle (root edgetrust/revocations, signed by the hub, see
edgetrust/bundles/revocations.py); the roots are disjoint so that OPA loads both side by side.

The revision is the policy repository's commit plus a counter that only grows; the counter decides which of
two bundles is newer. The cluster group the bundle is for is signed with it (metadata.group): counters are per
group, so a bundle handed to a cluster of another group would otherwise apply there, prune that group's
policies and move its rollback guard past that group's own next revision. Reading is bounded and strict: a
bundle is an attacker-supplied archive until its signature says otherwise.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetrust.bundles.errors import BundleBuildError, BundleFormatError, BundleGroupError, BundlePolicyError
from edgetrust.bundles.networkpolicy import PROTECTED_NAMESPACES, validate_network_policy, validate_site_classes
from edgetrust.bundles.policyfile import (
    SiteParameters,
    check_bundle_files,
    check_directory,
    check_gatekeeper,
    dump,
    repository_site,
)

ROOT = "edgetrust"
POLICY_ROOTS = [f"{ROOT}/admission", f"{ROOT}/gatekeeper", f"{ROOT}/lib", f"{ROOT}/networkpolicies"]
MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
MAX_BUNDLE_BYTES = 8 * 1024 * 1024  # compressed
MAX_UNPACKED_BYTES = 64 * 1024 * 1024  # a gzip bomb stops here
MAX_FILES = 4096
MAX_GROUP_CHARS = 253
#: a bundle counter is an int63 (what PostgreSQL's BIGINT and every JSON parser hold); it also names the hub's
#: file of the bundle, so an unbounded one (10^260) broke the publish and froze the group for ever
MAX_COUNTER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle's files by path (no leading slash). Only `signing.verify_bundle` makes one trustworthy."""

    files: Mapping[str, bytes]

    @property
    def manifest(self) -> Mapping[str, Any]:
        try:
            manifest = json.loads(self.files[MANIFEST])
        except KeyError:
            raise BundleFormatError("bundle has no .manifest") from None
        except ValueError as exc:
            raise BundleFormatError(f".manifest is not JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise BundleFormatError(".manifest is not a JSON object")
        return manifest

    @property
    def revision(self) -> str:
        return str(self.manifest.get("revision", ""))

    @property
    def counter(self) -> int:
        metadata = self.manifest.get("metadata") or {}
        counter = metadata.get("counter") if isinstance(metadata, dict) else None
        if not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter <= MAX_COUNTER:
            raise BundleFormatError(f".manifest metadata.counter must be a non-negative integer, at most {MAX_COUNTER}")
        return counter

    @property
    def group(self) -> str:
        """The cluster group this bundle was signed for; a bundle naming none is for no cluster."""
        metadata = self.manifest.get("metadata") or {}
        group = metadata.get("group") if isinstance(metadata, dict) else None
        if not isinstance(group, str) or not 0 < len(group) <= MAX_GROUP_CHARS:
            raise BundleGroupError(
                f"bundle {self.revision} names no cluster group (.manifest metadata.group); "
                "build it with `trustctl policy build --group`"
            )
        return group

    def extract(self, prefix: str, destination: Path) -> Path:
        """Write the files under `prefix` (e.g. "admission") to `destination`, for a reader of plain folders."""
        destination.mkdir(parents=True, exist_ok=True)
        lead = f"{ROOT}/{prefix}/"
        for name, content in self.files.items():
            if name.startswith(lead):
                target = destination / name[len(lead) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        return destination

    def data(self, path: str) -> Any:
        raw = self.files.get(f"{ROOT}/{path}/data.json")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BundleFormatError(f"{ROOT}/{path}/data.json is not JSON: {exc}") from exc

    @property
    def network_policies(self) -> dict[str, list[dict[str, Any]]]:
        found = self.data("networkpolicies") or {}
        if not isinstance(found, dict) or not all(isinstance(v, list) for v in found.values()):
            raise BundleFormatError("networkpolicies data must map site classes to lists")
        return found

    @property
    def revoked(self) -> dict[str, list[str]]:
        found = self.data("revocations") or {}
        if not isinstance(found, dict):
            raise BundleFormatError("revocations data must be an object")
        return {k: [str(x) for x in v] for k, v in found.items() if isinstance(v, list)}


@dataclass(slots=True)
class Source:
    """What goes into a bundle, read from a policies/-shaped repository."""

    rego: dict[str, bytes] = field(default_factory=dict)
    #: files only the webhook reads (policy.yaml, keys, trust roots, Gatekeeper YAML); OPA ignores them
    admission_files: dict[str, bytes] = field(default_factory=dict)
    network_policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def check_network_policies(bundle: Bundle, *, protected: Sequence[str] = PROTECTED_NAMESPACES) -> None:
    """Every NetworkPolicy of every site class valid and outside the protected namespaces, or BundlePolicyError:
    what the hub's publish and the agent run on a signed bundle (build and `policy test` ran it on the files)."""
    problem = validate_site_classes(bundle.data("networkpolicies") or {}, protected=protected)
    if problem:
        raise BundlePolicyError(f"bundle {bundle.revision}: {problem}")


def check_bundle(bundle: Bundle, *, protected: Sequence[str] = PROTECTED_NAMESPACES) -> None:
    """Everything in a bundle a cluster would refuse, or BundlePolicyError: its NetworkPolicies (the lockout rule
    included) and its admission policy and Gatekeeper files (edgetrust/bundles/policyfile.py); what `policy
    sign`, the hub's publish and the syncer run on a bundle."""
    check_network_policies(bundle, protected=protected)
    try:
        check_bundle_files(bundle.files)
    except BundlePolicyError as exc:
        raise type(exc)(f"bundle {bundle.revision}: {exc}") from None


def read_repository(
    policies: Path,
    *,
    protected: Sequence[str] = PROTECTED_NAMESPACES,
    parameters: Path | SiteParameters | None = None,
) -> Source:
    """policies/admission/**.rego and policies/networkpolicies/<site class>/*.yaml; every NetworkPolicy is
    validated here (the lockout rule included), so that a bad one fails the build naming its file and field,
    and so is every policy.yaml, with the site's parameters (`parameters`: a file or values; by default the
    repository's parameters.yaml) merged in as the bundle then carries them."""
    source = Source()
    admission = policies / "admission"
    if admission.is_dir():
        site = parameters if isinstance(parameters, SiteParameters) else repository_site(policies, parameters)
        merged = check_directory(admission, site)
        for path in sorted(p for p in admission.rglob("*") if p.is_file()):
            name = f"{ROOT}/admission/{path.relative_to(admission).as_posix()}"
            if path.name.endswith("_test.rego") or path.name in ("data.json", "data.yaml", "data.yml"):
                continue
            content = path.read_bytes()
            if path in merged and merged[path] != yaml.safe_load(content):  # the site's values, merged in
                content = dump(merged[path])
            (source.rego if path.suffix == ".rego" else source.admission_files)[name] = content
    gatekeeper = policies / "gatekeeper"
    if gatekeeper.is_dir():
        for path in sorted(p for p in gatekeeper.rglob("*.y*ml") if p.is_file() and "samples" not in p.parts):
            if path.name not in ("data.yaml", "data.yml"):
                check_gatekeeper(path.read_bytes(), str(path))
                source.admission_files[f"{ROOT}/gatekeeper/{path.relative_to(gatekeeper).as_posix()}"] = (
                    path.read_bytes()
                )
    network = policies / "networkpolicies"
    if network.is_dir():
        for site_class in sorted(p for p in network.iterdir() if p.is_dir()):
            objects: list[dict[str, Any]] = []
            for path in sorted(site_class.glob("*.y*ml")):
                try:
                    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
                except yaml.YAMLError as exc:
                    raise BundleBuildError(f"{path}: not YAML: {exc}") from exc
                for index, document in enumerate(documents):
                    problem = validate_network_policy(document, protected=protected)
                    if problem:
                        raise BundleBuildError(f"{path} (document {index + 1}): {problem}")
                    objects.append(document)
            names = [o["metadata"]["name"] for o in objects]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise BundleBuildError(f"{site_class}: NetworkPolicy names used twice: {', '.join(twice)}")
            source.network_policies[site_class.name] = objects
    return source


def build_files(source: Source, *, counter: int, commit: str, group: str) -> dict[str, bytes]:
    """The bundle's files for one cluster group (signed into the manifest with the counter)."""
    if not 0 <= counter <= MAX_COUNTER:
        raise BundleBuildError(f"the revision counter must be from 0 to {MAX_COUNTER}")
    if not 0 < len(group) <= MAX_GROUP_CHARS:
        raise BundleBuildError("a bundle is built for one cluster group: name it (--group)")
    problem = validate_site_classes(source.network_policies)
    if problem:
        raise BundleBuildError(problem)
    manifest = {
        "revision": f"{counter:012d}-{commit[:12]}",
        "roots": POLICY_ROOTS,
        "metadata": {"counter": counter, "commit": commit, "group": group},
    }
    files: dict[str, bytes] = {MANIFEST: _json(manifest)}
    files.update(source.rego)
    files.update(source.admission_files)
    files[f"{ROOT}/networkpolicies/data.json"] = _json(source.network_policies)
    return files


def pack(files: Mapping[str, bytes]) -> bytes:
    """A reproducible tar.gz: sorted names, no owners, no times; the same files give the same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(f"/{name}")
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(buffer.getvalue(), mtime=0)


def unpack(blob: bytes) -> Bundle:
    """Strict reading: size limits before and while unpacking, regular files only, no path escapes."""
    if len(blob) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"bundle is {len(blob)} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
    try:
        raw = _gunzip_bounded(blob)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BundleFormatError(f"bundle is not a readable tar.gz: {exc}") from exc
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise BundleFormatError(f"bundle holds {len(members)} entries, over the {MAX_FILES} limit")
            for member in members:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleFormatError(f"bundle entry {member.name!r} is not a regular file (links are refused)")
                name = _safe_name(member.name)
                if name in files:
                    raise BundleFormatError(f"bundle holds {name!r} twice")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise BundleFormatError(f"bundle entry {name!r} cannot be read")
                files[name] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleFormatError(f"bundle tar is truncated or corrupt: {exc}") from exc
    bundle = Bundle(files)
    _ = bundle.manifest  # a bundle without a readable manifest is refused here, before anyone trusts it
    return bundle


def _safe_name(name: str) -> str:
    cleaned = posixpath.normpath(name.lstrip("/"))
    if cleaned.startswith("../") or cleaned == ".." or cleaned.startswith("/") or "\\" in name or not cleaned:
        raise BundleFormatError(f"bundle entry {name!r} escapes the bundle")
    return cleaned


def _gunzip_bounded(blob: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
        raw = stream.read(MAX_UNPACKED_BYTES + 1)
    if len(raw) > MAX_UNPACKED_BYTES:
        raise BundleFormatError(f"bundle unpacks to over {MAX_UNPACKED_BYTES} bytes")
    return raw


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
