"""`trustctl policy build | sign | publish | rollout status | rollback`: from a policy repository to the fleet.

The revision counter defaults to the repository's commit count on its branch, which only grows as long as
history is not rewritten; `--counter` overrides it (a rollback re-publishes old content under a new counter,
since clusters refuse anything not newer than what they applied).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from edgetrust.bundles.errors import BundleError

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser
    from edgetrust.bundles.format import Bundle

BAR_WIDTH = 30


def add_parsers(commands: argparse._SubParsersAction[Parser]) -> None:
    from edgetrust._internal.cli import add_json

    build = commands.add_parser("build", help="build a bundle from a policies/ repository")
    build.add_argument("repository", type=Path)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--counter", type=int, help="revision counter (default: the repository's commit count)")
    build.add_argument("--commit", help="revision commit (default: the repository's HEAD)")
    build.add_argument(
        "--parameters",
        type=Path,
        metavar="FILE",
        help="the site's parameters file ({policy: {parameter: value}}, merged into the bundle's policy.yaml; "
        "default: <repository>/parameters.yaml)",
    )
    build.add_argument(
        "--group", required=True, help="the cluster group it is for (signed; clusters of other groups refuse it)"
    )
    _signing_args(build, required=False)
    add_json(build)

    sign = commands.add_parser("sign", help="sign (or re-sign) a bundle")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--out", type=Path)
    sign.add_argument("--group", help="set the cluster group it is for (default: the one its manifest names)")
    _signing_args(sign, required=True)
    add_json(sign)

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
    add_json(push)

    rollout = commands.add_parser("rollout", help="rollout progress of a cluster group")
    rollout_commands = rollout.add_subparsers(dest="rollout_command", required=True)
    status = rollout_commands.add_parser("status")
    status.add_argument("group")
    status.add_argument("--watch", action="store_true", help="refresh until the rollout completes or halts")
    _hub_args(status)

    rollback = commands.add_parser("rollback", help="re-publish an earlier bundle's content as the newest revision")
    rollback.add_argument("group")
    rollback.add_argument("--to", type=Path, required=True, help="the earlier bundle (.tar.gz)")
    _signing_args(rollback, required=True)
    _hub_args(rollback)


def _signing_args(parser: Parser, *, required: bool) -> None:
    parser.add_argument("--key", type=Path, required=required, help="ES256 (P-256) private key, PEM")
    parser.add_argument("--key-id", required=required, help="the id clusters and OPA know this key by")


def _hub_args(parser: Parser) -> None:
    from edgetrust._internal.cli import add_hub, add_json

    add_hub(parser)
    parser.add_argument("--ca-bundle", type=Path, required=True, help="roots that sign trustd's certificate")
    parser.add_argument("--svid", type=Path, required=True, help="your X.509-SVID (PEM), a publisher of the fleet")
    parser.add_argument("--svid-key", type=Path, required=True)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """A hub's failure (HubCallError) goes up to trustctl, which prints it with its exit code."""
    from edgetrust._internal import hubclient
    from edgetrust._internal.cli import EXIT_REFUSED, EXIT_USAGE, fail

    prog = f"trustctl policy {args.policy_command}"
    try:
        command = args.policy_command
        if command == "build":
            return _build(args)
        if command == "sign":
            return _sign(args)
        if command == "publish":
            blob = args.bundle.read_bytes()
            with _hub(args) as hub:
                return _show(_publish(hub, args.group, blob), args)
        if command == "rollout":
            return _status(args)
        if command == "push":
            return _push(args)
        if command == "rollback":
            return _rollback(args)
    except hubclient.HubCallError as exc:
        return fail(prog, exc, exc.exit_code())
    except BundleError as exc:
        return fail(prog, exc, EXIT_REFUSED)
    except OSError as exc:  # a file the command line names
        return fail(prog, exc, EXIT_USAGE)
    return EXIT_USAGE


def _git(repository: Path, *argv: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repository), *argv], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _build(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_OK
    from edgetrust.bundles.format import build_files, pack, read_repository, unpack
    from edgetrust.bundles.signing import SigningKey, sign_files

    counter = (
        args.counter if args.counter is not None else int(_git(args.repository, "rev-list", "--count", "HEAD") or 0)
    )
    commit = args.commit or _git(args.repository, "rev-parse", "HEAD") or "uncommitted"
    if args.parameters is not None and not args.parameters.is_file():
        raise FileNotFoundError(f"--parameters {args.parameters}: no such file")
    source = read_repository(args.repository, parameters=args.parameters)
    files = build_files(source, counter=counter, commit=commit, group=args.group)
    if args.key:
        files = sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes()))
    args.out.write_bytes(pack(files))
    signed = "signed by " + args.key_id if args.key else "unsigned"
    revision = files and unpack(args.out.read_bytes()).revision
    if args.json:
        view = {"bundle": str(args.out), "revision": revision, "group": args.group, "files": len(files)}
        print(json.dumps({**view, "key_id": args.key_id if args.key else None}))
    else:
        print(f"built {args.out}: revision {revision} for group {args.group}, {len(files)} files, {signed}")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_OK
    from edgetrust.bundles.format import MANIFEST, SIGNATURES, check_bundle, pack, unpack
    from edgetrust.bundles.signing import SigningKey, sign_files

    bundle = unpack(args.bundle.read_bytes())
    files = {k: v for k, v in bundle.files.items() if k != SIGNATURES}
    if args.group:
        files[MANIFEST] = _with_group(bundle, args.group)
        bundle = unpack(pack(files))
    check_bundle(bundle)  # nothing is signed that the hub and the syncers would refuse
    group = bundle.group  # a bundle is signed for one group, or not at all
    out = args.out or args.bundle
    out.write_bytes(pack(sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes()))))
    if args.json:
        print(json.dumps({"bundle": str(out), "revision": bundle.revision, "group": group, "key_id": args.key_id}))
    else:
        print(f"signed {out} (revision {bundle.revision}, group {group}) with key {args.key_id}")
    return EXIT_OK


def _with_group(bundle: Bundle, group: str) -> bytes:
    manifest = dict(bundle.manifest)
    manifest["metadata"] = {**(manifest.get("metadata") or {}), "group": group}
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _push(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, fail
    from edgetrust.bundles.format import SIGNATURES, unpack
    from edgetrust.bundles.oci import OCIReference, push_bundle, registry_settings

    blob = args.bundle.read_bytes()
    bundle = unpack(blob)
    if SIGNATURES not in bundle.files:
        return fail("trustctl policy push", "refused: sign the bundle first (trustctl policy sign)", EXIT_REFUSED)
    settings = registry_settings(args.registry_ca, args.registry_auth_file)
    digest = push_bundle(OCIReference.parse(args.reference), blob, settings)
    if args.json:
        print(json.dumps({"reference": args.reference, "revision": bundle.revision, "digest": digest}))
    else:
        print(f"pushed {bundle.revision} to {args.reference} ({digest})")
    return EXIT_OK


def _hub(args: argparse.Namespace) -> httpx.Client:
    from edgetrust._internal import hubclient

    return hubclient.client(args.hub, hubclient.tls_context(args.ca_bundle, args.svid, args.svid_key))


def _publish(hub: httpx.Client, group: str, blob: bytes) -> dict[str, Any]:
    from edgetrust._internal import hubclient

    return hubclient.call(hub, "POST", f"/v1/policy/bundles/{group}", content=blob, action="publish")


def _rollout(hub: httpx.Client, group: str) -> dict[str, Any]:
    from edgetrust._internal import hubclient

    return hubclient.call(hub, "GET", f"/v1/policy/rollouts/{group}", action="rollout status")


def _show(view: dict[str, Any], args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_OK

    print(json.dumps(view) if args.json else render(view))
    return EXIT_OK


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
        if wave["open"]:
            lines.extend(_cluster_line(c, view.get("clusters", {}).get(c)) for c in wave["clusters"])
    return "\n".join(lines)


def _cluster_line(cluster: str, status: dict[str, Any] | None) -> str:
    """One cluster of an open wave: the NetworkPolicy revision its syncer applied, the admission one per replica."""
    if not status or not status.get("networkpolicies"):
        return f"    {cluster}: no report"
    policies = status["networkpolicies"]
    line = f"    {cluster}: networkpolicies {policies.get('revision')} {policies.get('result')}"
    admission = status.get("admission") or {}
    if admission.get("handoff"):
        replicas = ", ".join(
            f"{pod} {r['revision']} ({r['counter']}) {r['state']}" for pod, r in sorted(admission["replicas"].items())
        )
        line += f"; admission {admission['state']}: {replicas or admission.get('reason', '')}"
    return line


def _status(args: argparse.Namespace) -> int:
    with _hub(args) as hub:
        while True:
            view = _rollout(hub, args.group)
            code = _show(view, args)
            if not args.watch or view["complete"] or view["halted"]:
                return code
            time.sleep(2)


def _rollback(args: argparse.Namespace) -> int:
    from edgetrust.bundles.format import MANIFEST, SIGNATURES, check_bundle, pack, unpack
    from edgetrust.bundles.signing import SigningKey, sign_files

    with _hub(args) as hub:
        current = _rollout(hub, args.group)
        old = unpack(args.to.read_bytes())
        manifest = dict(old.manifest)
        counter = int(current["counter"]) + 1
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
        check_bundle(unpack(pack(files)))
        blob = pack(sign_files(files, SigningKey.from_pem(args.key_id, args.key.read_bytes())))
        if not args.json:
            print(f"rolling {args.group} back to the content of {old.revision} as revision {manifest['revision']}")
        return _show(_publish(hub, args.group, blob), args)
