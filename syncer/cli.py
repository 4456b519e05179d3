"""`edgetrust-syncer run`: the per-cluster agent's process (a Deployment in each edge cluster);
`edgetrust-syncer status`: what its last sync did, read from its state directory.

It re-applies the last accepted bundle from disk at start, then long-polls the hub forever; every outcome is
logged and reported (queued while the hub is out of reach). A hub out of reach (no answer, 429, 5xx) and a
hub that answered no (401/403: this cluster not in the fleet file, or revoked; another 4xx: a bad request) are
told apart: both are retried with backoff (an operator may fix the fleet file), and logged with what to check.
The last outcome is kept in `<state-dir>/last-sync.json` for `status`. With `--once`: one sync, exit 0 when it
applied or had nothing to do, 1 when it (or the hub) refused or failed, 3 when the source was unreachable,
2 for a bad command line; a non-zero exit says why on one stderr line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edgetrust._internal import files, hubclient, logs
from edgetrust._internal import kube as kubeapi
from edgetrust._internal.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_hub,
    add_json,
    add_verification_keys,
    fail,
    verification_key_files,
)
from edgetrust._internal.hubclient import HubCallError, HubFailure
from edgetrust.bundles.errors import BundleError, SourceUnreachableError
from edgetrust.bundles.oci import BundleRegistry, OCIReference, registry_settings
from edgetrust.bundles.revocations import KEY_ID, RevocationStore
from edgetrust.bundles.signing import load_verification_keys
from edgetrust.spiffe.workload import SOCKET_ENV, WorkloadSvid, WorkloadSvidError, socket_address
from syncer.agent import BundleSource, SyncAgent, SyncOutcome, SyncResult, pace, run_backoff
from syncer.handoff import ConfigMapHandoff
from syncer.kube import KubeClient, KubeConfig
from syncer.nodestatus import NodeStatusRelay
from syncer.sources import HubSource, OCISource, hub_node_status, hub_reporter, hub_session
from syncer.state import AgentState

log = logging.getLogger("edgetrust.syncer")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LAST_SYNC = "last-sync.json"


def _parser() -> Parser:
    parser = Parser(prog="edgetrust-syncer", description="edgetrust policy syncer (one per cluster)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="pull, verify and apply policy bundles until stopped")
    logs.add_arguments(run)
    add_hub(run)
    run.add_argument("--ca-bundle", type=Path, required=True, help="roots that sign trustd's certificate")
    run.add_argument(
        "--spiffe-socket",
        help=f"the node agent's Workload API socket (path or unix:// URL; default: ${SOCKET_ENV}): this cluster's "
        "X.509-SVID comes from it and is followed as it rotates. The default way.",
    )
    run.add_argument(
        "--svid",
        type=Path,
        help="FALLBACK for clusters without the node agent: this cluster's X.509-SVID (PEM) from a file (a Secret); "
        "nothing renews it. Replaces the Workload API.",
    )
    run.add_argument("--svid-key", type=Path, help="the --svid fallback's private key")
    run.add_argument("--cluster", required=True, help="this cluster's name in the fleet")
    run.add_argument(
        "--group", required=True, help="this cluster's group in the fleet: bundles signed for another are refused"
    )
    run.add_argument("--site-class", required=True, help="which NetworkPolicies of the bundle apply here")
    add_verification_keys(run)
    run.add_argument(
        "--revocation-key", type=Path, help="the hub's revocation-signing public key (PEM); enables the revocation list"
    )
    run.add_argument("--revocations-out", type=Path, help="where to write the verified revocation list (JSON)")
    run.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgetrust/syncer"))
    run.add_argument(
        "--kube-url",
        help="the API server (default: from KUBERNETES_SERVICE_HOST/PORT in a pod, else https://kubernetes.default.svc)",
    )
    run.add_argument("--kube-token-file", type=Path, default=SERVICE_ACCOUNT / "token")
    run.add_argument("--kube-ca-file", type=Path, default=SERVICE_ACCOUNT / "ca.crt")
    run.add_argument(
        "--bundle-oci",
        metavar="REGISTRY/REPOSITORY:TAG",
        help="take bundles from this OCI artifact (a registry mirror near the site) instead of the hub's long poll; "
        "status still goes to the hub",
    )
    run.add_argument("--registry-ca", type=Path, help="roots of the mirror's TLS certificate")
    run.add_argument(
        "--registry-auth-file", type=Path, help="the mirror's credentials (a Docker config.json; Basic or token)"
    )
    run.add_argument(
        "--admission-handoff-namespace",
        metavar="NS",
        help="hand each applied bundle to the webhook replicas in this namespace (ConfigMap "
        "edgetrust-admission-bundle, which they verify and follow with --follow-bundles); default: no handoff",
    )
    run.add_argument(
        "--node-attestation-namespace",
        metavar="NS",
        help="relay the hub's signed node attestation document and revocation list to the webhook replicas in "
        "this namespace (ConfigMap edgetrust-node-attestation; the webhook's --node-attestation); needs "
        "--revocation-key; default: not relayed",
    )
    run.add_argument("--wait", type=float, default=30.0, help="long-poll seconds")
    run.add_argument("--once", action="store_true", help="one sync, then exit (for jobs and tests)")
    status = commands.add_parser(
        "status", help="what the last sync did (and why a refusal): exit 0 ok, 1 refused or failed, 3 unreachable"
    )
    status.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgetrust/syncer"))
    add_json(status)
    return parser


def _spiffe_id(svid: Path) -> str:
    """This cluster's SPIFFE ID, from its SVID, for the hint when the hub refuses it."""
    try:
        cert = x509.load_pem_x509_certificate(svid.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return f"the SPIFFE ID of {svid}"
    return uris[0] if uris else f"the SPIFFE ID of {svid}"


def explain(outcome: SyncOutcome, *, source: str, spiffe_id: str, retrying: bool = True) -> str:
    """One line for a person: what happened, and for a refusal what to check."""
    code, _, text = outcome.error.partition(": ")
    if outcome.result is SyncResult.UNREACHABLE:
        why = text if code == SourceUnreachableError.code else outcome.error  # other codes say which bound
        then = "retrying with backoff" if retrying else "nothing applied"
        return f"{source} unreachable: {why}; {then} (the last known good bundle stays enforced)"
    if outcome.result is SyncResult.SOURCE_REFUSED:
        if code == "hub_refused":
            return f"{text}; is {spiffe_id} in the fleet file, or revoked? (trustctl fleet list)"
        return f"{source} refused the request ({code}): {text}"
    return " ".join(part for part in (str(outcome.result), outcome.revision, outcome.error) if part)


def _exit_code(result: SyncResult) -> int:
    if result.ok:
        return EXIT_OK
    return EXIT_UNREACHABLE if result is SyncResult.UNREACHABLE else EXIT_REFUSED


def _remember(state_dir: Path, outcome: SyncOutcome, message: str) -> None:
    """The last outcome, for `edgetrust-syncer status` (and a person reading the state directory)."""
    record: dict[str, object] = {"result": str(outcome.result), "revision": outcome.revision, "error": outcome.error}
    record |= {"message": message, "at": int(time.time())}
    try:
        files.write_atomic(state_dir / LAST_SYNC, json.dumps(record, indent=2).encode() + b"\n", mode=0o644)
    except OSError as exc:
        log.warning("cannot record the last sync in %s: %s", state_dir, exc)


def _status(args: argparse.Namespace) -> int:
    path = args.state_dir / LAST_SYNC
    try:
        record = json.loads(path.read_bytes())
        result = SyncResult(record["result"])
        message, at = str(record["message"]), int(record["at"])
    except FileNotFoundError:
        return fail("edgetrust-syncer", f"no sync recorded in {args.state_dir} (has edgetrust-syncer run run?)", 1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return fail("edgetrust-syncer", f"{path}: not a last-sync record ({exc})", EXIT_USAGE)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
        print(f"last sync {when}: {result}: {message}")
    return _exit_code(result)


_SVID_HINT = "this cluster's X.509-SVID and key, issued by the hub for spiffe://<trust domain>/cluster/<name>"
_KUBE_HINT = "outside a pod give --kube-url, --kube-token-file and --kube-ca-file"


def _check_start(args: argparse.Namespace) -> dict[str, bytes]:
    """What `run` needs, checked before anything starts, each refusal naming the flag and what to give: the
    publishers' keys (without one every bundle would be refused), the files it reads, a writable state dir."""
    if not args.verification_keys:
        raise UsageError(
            "no --verification-key: every bundle would be refused; give the publisher's public key, "
            "e.g. --verification-key ci-1=ci-1.pem"
        )
    if (args.svid is None) != (args.svid_key is None):
        raise UsageError("--svid and --svid-key go together (the fallback); without both the Workload API is used")
    if args.svid is not None and args.spiffe_socket:
        raise UsageError("--spiffe-socket or the --svid fallback, not both: which identity would the syncer use?")
    if args.node_attestation_namespace and args.revocation_key is None:
        raise UsageError("--node-attestation-namespace needs --revocation-key: the document is signed with that key")
    files_needed = [
        ("--ca-bundle", args.ca_bundle, "the roots that sign trustd's certificate"),
        ("--svid", args.svid, _SVID_HINT),
        ("--svid-key", args.svid_key, _SVID_HINT),
        ("--kube-token-file", args.kube_token_file, _KUBE_HINT),
        ("--kube-ca-file", args.kube_ca_file, _KUBE_HINT),
        ("--revocation-key", args.revocation_key, "the hub's revocation-signing public key"),
        ("--registry-ca", args.registry_ca, "the mirror's TLS roots"),
        ("--registry-auth-file", args.registry_auth_file, "a Docker config.json"),
    ]
    for flag, path, hint in files_needed:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise UsageError(f"{flag} {path}: {exc.strerror or exc} ({hint})") from exc
    try:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        probe = args.state_dir / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--state-dir {args.state_dir}: {exc.strerror or exc} (give a writable directory)") from exc
    keys = {key_id: path.read_bytes() for key_id, path in verification_key_files(args.verification_keys).items()}
    try:
        load_verification_keys(keys)
    except BundleError as exc:
        raise UsageError(f"--verification-key: {exc}") from exc
    return keys


@dataclass(frozen=True, slots=True)
class Identity:
    context: ssl.SSLContext
    spiffe_id: str
    workload: WorkloadSvid | None = None  # None: the --svid fallback

    def check(self) -> None:
        """Before each sync: a Workload API stream that ended for good stops the syncer (its pod restarts)."""
        if self.workload is not None:
            try:
                self.workload.check_open()
            except WorkloadSvidError as exc:
                raise HubCallError(HubFailure.LOCAL, exc.diagnostics()) from exc


def _identity(args: argparse.Namespace, stack: contextlib.ExitStack) -> Identity:
    """The mTLS context to the hub and the SPIFFE ID it presents: from the Workload API (followed as the node
    agent rotates it), or, only when --svid is given, the fallback files (read once). Waiting for the first SVID
    blocks the loop (up to START_TIMEOUT_S): nothing else runs before the syncer has an identity."""
    if args.svid is not None:
        return Identity(hubclient.tls_context(args.ca_bundle, args.svid, args.svid_key), _spiffe_id(args.svid))
    try:
        workload = stack.enter_context(WorkloadSvid(socket_address(args.spiffe_socket), args.ca_bundle))
    except WorkloadSvidError as exc:
        raise UsageError(exc.diagnostics()) from exc
    workload.bind(asyncio.get_running_loop())
    log.info("X.509-SVID from the Workload API: %s", workload.spiffe_id)
    return Identity(workload.context, workload.spiffe_id, workload)


async def _run(args: argparse.Namespace) -> int:
    keys = _check_start(args)
    with contextlib.ExitStack() as stack:
        return await _sync(args, keys, _identity(args, stack))


async def _sync(args: argparse.Namespace, keys: dict[str, bytes], identity: Identity) -> int:
    context, spiffe_id = identity.context, identity.spiffe_id
    # the token file is followed as the kubelet rotates it (bound service-account tokens), not read once
    kube_url = args.kube_url or kubeapi.in_cluster_url()
    kube_config = KubeConfig(kube_url, token_file=args.kube_token_file, ca_file=args.kube_ca_file)
    kube = KubeClient(kube_config)
    handoff = (
        ConfigMapHandoff(kube_config, namespace=args.admission_handoff_namespace)
        if args.admission_handoff_namespace
        else None
    )
    registry = None
    async with hub_session(args.hub, context) as http:
        source: BundleSource
        if args.bundle_oci:
            registry = BundleRegistry(registry_settings(args.registry_ca, args.registry_auth_file))
            source = OCISource(registry, OCIReference.parse(args.bundle_oci))
        else:
            source = HubSource(
                "/v1/policy/bundle",
                http,
                wait_s=args.wait,
                revocations_url="/v1/policy/revocations" if args.revocation_key else None,
            )
        agent = SyncAgent(
            cluster=args.cluster,
            group=args.group,
            site_class=args.site_class,
            source=source,
            keys=load_verification_keys(keys),
            kube=kube,
            state=AgentState(args.state_dir),
            reporter=hub_reporter("/v1/policy/status", http),
            revocations=RevocationStore(
                args.state_dir,
                load_verification_keys({KEY_ID: args.revocation_key.read_bytes()}),
                args.revocations_out,
            )
            if args.revocation_key
            else None,
            handoff=handoff,
        )
        relay = (
            NodeStatusRelay(
                hub_node_status(f"/v1/fleet/clusters/{args.cluster}/nodes", http),
                kube_config,
                cluster=args.cluster,
                namespace=args.node_attestation_namespace,
                keys=load_verification_keys({KEY_ID: args.revocation_key.read_bytes()}),
                revocations=agent.revocations,
            )
            if args.node_attestation_namespace
            else None
        )
        restored = await agent.start()
        if restored is not None:
            log.info("re-applied %s from disk: %s", restored.revision, restored.result)
        backoff = run_backoff()
        source_name = "the registry mirror" if args.bundle_oci else "hub"
        while True:
            identity.check()
            outcome = await agent.run_once()
            if relay is not None and outcome.result is not SyncResult.UNREACHABLE:
                await relay.run_once()
            message = explain(outcome, source=source_name, spiffe_id=spiffe_id, retrying=not args.once)
            if outcome.result is not SyncResult.NOT_MODIFIED:
                log.log(logging.INFO if outcome.result.ok else logging.WARNING, "sync: %s", message)
                _remember(args.state_dir, outcome, message)
            if args.once:
                await agent.flush_reports()
                await kube.aclose()
                if handoff is not None:
                    await handoff.aclose()
                if relay is not None:
                    await relay.aclose()
                if registry is not None:
                    await registry.aclose()
                code = _exit_code(outcome.result)
                return code if code == EXIT_OK else fail("edgetrust-syncer", message, code)
            if await pace(outcome, backoff) is not None:
                continue
            if registry is not None:  # a registry has no long poll: look again every `wait` seconds
                await asyncio.sleep(args.wait)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        return _status(args)
    logs.configure_from(args)
    try:
        return asyncio.run(_run(args))
    except BundleError as exc:
        return fail("edgetrust-syncer", exc.diagnostics(), EXIT_REFUSED)
    except HubCallError as exc:
        return fail("edgetrust-syncer", exc, exc.exit_code())
    except (UsageError, OSError) as exc:  # the command line, or a file it names
        return fail("edgetrust-syncer", exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
