"""`trustctl policy build | sign | publish | rollout status | rollback`: from a policy repository to the fleet.

The revision counter defaults to the repository's commit count on its branch, which only grows as long as
history is not rewritten; `--counter` overrides it (a rollback re-publishes old content under a new counter,
since clusters refuse anything not newer than what they applied).
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from syncer.bundle import (
    MANIFEST,
    SIGNATURES,
    Bundle,
    build_files,
    check_network_policies,
    pack,
    read_repository,
    unpack,
)
from syncer.errors import SyncerError
from syncer.oci import OCIReference, push_bundle, registry_settings
from syncer.signing import SigningKey, sign_files
from trustd.enroll_client import print_hub_failure

BAR_WIDTH = 30


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser("build", help="build a bundle from a policies/ repository")
    build.add_argument("repository", type=Path)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--counter", type=int, help="revision counter (default: the repository's commit count)")
    build.add_argument("--commit", help="revision commit (default: the repository's HEAD)")
    build.add_argument(
        "--group", required=True, help="the cluster group it is for (signed; clusters of other groups refuse it)"
    )
    _signing_args(build, required=False)

    sign = commands.add_parser("sign", help="sign (or re-sign) a bundle")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--out", type=Path)
    sign.add_argument("--group", help="set the cluster group it is for (default: the one its manifest names)")
    _signing_args(sign, required=True)

    publish = commands.add_parser("publish", help="publish a signed bundle to a cluster group on trustd")
    publish.add_argument("bundle", type=Path)
    publish.add_argument("--group", required=True)
    _hub_args(publish)

    push = commands.add_parser("push", help="push a signed bundle to an OCI registry (for mirrors near sites)")
    push.add_argument("bundle", type=Path)
    push.add_argument("reference", help="registry/repository:tag")
    push.add_argument("--registry-ca", type=Path, help="roots of the registry's TLS certificate")
    push.add_argument(
        "--registry-auth-file", type=Path, help="the registry's credentials (a Docker config.json; Basic or token)"
    )

    rollout = commands.add_parser("rollout", help="rollout progress of a cluster group")
    rollout_commands = rollout.add_subparsers(dest="rollout_command", required=True)
    status = rollout_commands.add_parser("status")
    status.add_argument("group")
    status.add_argument("--watch", action="store_true", help="refresh until the rollout completes or halts")
    status.add_argument("--json", action="store_true")
    _hub_args(status)

    rollback = commands.add_parser("rollback", help="re-publish an earlier bundle's content as the newest revision")
    rollback.add_argument("group")
    rollback.add_argument("--to", type=Path, required=True, help="the earlier bundle (.tar.gz)")
    _signing_args(rollback, required=True)
    _hub_args(rollback)


def _signing_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--key", type=Path, required=required, help="ES256 (P-256) private key, PEM")
    parser.add_argument("--key-id", required=required, help="the id clusters and OPA know this key by")


def _hub_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", required=True, help="trustd URL")
    parser.add_argument("--ca-bundle", type=Path, required=True, help="roots that sign trustd's certificate")
    parser.add_argument("--svid", type=Path, required=True, help="your X.509-SVID (PEM), a publisher of the fleet")
    parser.add_argument("--svid-key", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    try:
        command = args.policy_command
        if command == "build":
            return _build(args)
        if command == "sign":
            return _sign(args)
        if command == "publish":
            return _show(_hub(args).post(f"/v1/policy/bundles/{args.group}", content=args.bundle.read_bytes()), args)
        if command == "rollout":
            return _status(args)
        if command == "push":
            return _push(args)
        if command == "rollback":
            return _rollback(args)
    except (SyncerError, OSError) as exc:
        print(f"trustctl policy {args.policy_command}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"trustctl policy {args.policy_command}: the hub is unreachable: {exc}", file=sys.stderr)
        return 3
    return 2


def _git(repository: Path, *argv: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repository), *argv], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _build(args: argparse.Namespace) -> int:
    counter = (
        args.counter if args.counter is not None else int(_git(args.repository, "rev-list", "--count", "HEAD") or 0)
    )
    commit = args.commit or _git(args.repository, "rev-parse", "HEAD") or "uncommitted"
    files = build_files(read_repository(args.repository), counter=counter, commit=commit, group=args.group)
    if args.key:
        files = sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes()))
    args.out.write_bytes(pack(files))
    signed = "signed by " + args.key_id if args.key else "unsigned"
    print(
        f"built {args.out}: revision {files and unpack(args.out.read_bytes()).revision} for group {args.group}, "
        f"{len(files)} files, {signed}"
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    bundle = unpack(args.bundle.read_bytes())
    files = {k: v for k, v in bundle.files.items() if k != SIGNATURES}
    if args.group:
        files[MANIFEST] = _with_group(bundle, args.group)
        bundle = unpack(pack(files))
    check_network_policies(bundle)  # nothing is signed that the hub and the syncers would refuse
    group = bundle.group  # a bundle is signed for one group, or not at all
    out = args.out or args.bundle
    out.write_bytes(pack(sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes()))))
    print(f"signed {out} (revision {bundle.revision}, group {group}) with key {args.key_id}")
    return 0


def _with_group(bundle: Bundle, group: str) -> bytes:
    manifest = dict(bundle.manifest)
    manifest["metadata"] = {**(manifest.get("metadata") or {}), "group": group}
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _push(args: argparse.Namespace) -> int:
    blob = args.bundle.read_bytes()
    bundle = unpack(blob)
    if SIGNATURES not in bundle.files:
        print("refused: sign the bundle first (trustctl policy sign)", file=sys.stderr)
        return 1
    settings = registry_settings(args.registry_ca, args.registry_auth_file)
    digest = push_bundle(OCIReference.parse(args.reference), blob, settings)
    print(f"pushed {bundle.revision} to {args.reference} ({digest})")
    return 0


def _hub(args: argparse.Namespace) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(args.ca_bundle))
    context.load_cert_chain(str(args.svid), str(args.svid_key))
    return httpx.Client(base_url=args.hub, verify=context, timeout=30)


def _show(answer: httpx.Response, args: argparse.Namespace) -> int:
    if answer.status_code != 200:
        return print_hub_failure(answer, f"policy {args.policy_command}")
    view = answer.json()
    if getattr(args, "json", False):
        print(json.dumps(view))
    else:
        print(render(view))
    return 0


def render(view: dict[str, Any]) -> str:
    """A progress bar per wave, for people."""
    state = "halted" if view["halted"] else "complete" if view["complete"] else "in progress"
    lines = [f"revision {view['revision']}: {state}"]
    for index, wave in enumerate(view["waves"]):
        total = len(wave["clusters"]) or 1
        done = len(wave["applied"])
        filled = round(BAR_WIDTH * done / total)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        mark = "open" if wave["open"] else "waiting"
        lines.append(f"  wave {index} [{bar}] {done}/{len(wave['clusters'])} applied ({mark})")
        lines.extend(f"    failed {cluster}: {error}" for cluster, error in wave["failed"].items())
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    with _hub(args) as hub:
        while True:
            answer = hub.get(f"/v1/policy/rollouts/{args.group}")
            code = _show(answer, args)
            if code or not args.watch or answer.json()["complete"] or answer.json()["halted"]:
                return code
            time.sleep(2)


def _rollback(args: argparse.Namespace) -> int:
    with _hub(args) as hub:
        current = hub.get(f"/v1/policy/rollouts/{args.group}")
        if current.status_code != 200:
            return print_hub_failure(current, f"policy {args.policy_command}")
        old = unpack(args.to.read_bytes())
        manifest = dict(old.manifest)
        counter = int(current.json()["counter"]) + 1
        commit = str((manifest.get("metadata") or {}).get("commit", "rollback"))
        manifest["revision"] = f"{counter:012d}-{commit[:12]}"
        manifest["metadata"] = {
            **(manifest.get("metadata") or {}),
            "counter": counter,
            "rollback_of": old.revision,
            "group": args.group,  # signed for the group it is rolled back in
        }
        files = {k: v for k, v in old.files.items() if k != SIGNATURES}
        files[MANIFEST] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        check_network_policies(unpack(pack(files)))
        blob = pack(sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes())))
        print(f"rolling {args.group} back to the content of {old.revision} as revision {manifest['revision']}")
        return _show(hub.post(f"/v1/policy/bundles/{args.group}", content=blob), args)
