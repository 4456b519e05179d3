"""`trustctl agent run | renew | status`. The agent's modules are imported when a command runs, not to build
the parser (`trustctl agent run --help` loads none of them)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser

DEFAULT_SOCKET = Path("/run/edgetrust/agent/api.sock")
DEFAULT_STATE = Path("/var/lib/edgetrust/agent")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def add_parser(sub: argparse._SubParsersAction[Parser], help: str) -> None:
    from edgetrust._internal import logs
    from edgetrust._internal.cli import add_hub, add_json

    agent = sub.add_parser("agent", help=help)
    commands = agent.add_subparsers(dest="agent_command", required=True)
    run = commands.add_parser("run", help="serve the Workload API until stopped")
    logs.add_arguments(run)
    add_hub(run)
    run.add_argument("--svid-dir", type=Path, default=Path("/var/lib/edgetrust/svid"), help="from trustctl enroll")
    run.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    run.add_argument("--entry-poll", type=float, default=30.0, help="seconds between looks for new entries")
    run.add_argument("--tpm", help="TCTI of the node's TPM: renew the node SVID with fresh quotes (recommended)")
    run.add_argument("--event-log", type=Path, help="boot event log sent with each renewal's quote")
    run.add_argument("--kube-node", help="on a Kubernetes node (DaemonSet): its name, enabling k8s:* selectors")
    run.add_argument(
        "--kube-url",
        help="the API server (default: KUBERNETES_SERVICE_HOST:_PORT in a pod, else https://kubernetes.default.svc)",
    )
    run.add_argument("--kube-token-file", type=Path, default=SERVICE_ACCOUNT / "token")
    run.add_argument("--kube-ca-file", type=Path, default=SERVICE_ACCOUNT / "ca.crt")
    run.add_argument("--metrics-port", type=int, help="Prometheus metrics on 127.0.0.1:PORT")
    run.add_argument("--proc-root", type=Path, default=Path("/proc"), help="the host's /proc (e.g. /host/proc)")
    renew = commands.add_parser("renew", help="renew the node SVID now, with a fresh quote")
    add_hub(renew)
    renew.add_argument("--svid-dir", type=Path, default=Path("/var/lib/edgetrust/svid"))
    renew.add_argument("--tpm", required=True, help="TCTI, e.g. device:/dev/tpmrm0")
    renew.add_argument("--event-log", type=Path)
    add_json(renew)
    status = commands.add_parser("status", help="what this node holds and how long until it expires")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    add_json(status)


def run(args: argparse.Namespace) -> int:
    from edgetrust._internal import logs
    from edgetrust._internal.cli import EXIT_OK

    if args.agent_command in ("run", "renew"):
        missing = _missing_svid(args.svid_dir)
        if missing is not None:
            from edgetrust._internal.cli import EXIT_USAGE, fail

            return fail(f"trustctl agent {args.agent_command}", missing, EXIT_USAGE)
    if args.agent_command == "run":
        from edgetrust._internal.kube import in_cluster_url
        from trustd.agent.k8s import KubeAttestor
        from trustd.agent.node import run_agent

        logs.configure_from(args)
        try:
            asyncio.run(
                run_agent(
                    args.hub,
                    args.svid_dir,
                    args.socket,
                    args.state_dir,
                    entry_poll_s=args.entry_poll,
                    tcti=args.tpm,
                    event_log=args.event_log,
                    kube=KubeAttestor(
                        node=args.kube_node,
                        url=args.kube_url or in_cluster_url(),
                        token_file=args.kube_token_file,
                        ca_file=args.kube_ca_file,
                        proc_root=args.proc_root,
                    )
                    if args.kube_node
                    else None,
                    metrics_port=args.metrics_port,
                )
            )
        except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM: stopped cleanly
            return 0
        return 0
    if args.agent_command == "renew":
        from trustd.agent.renewal_client import renew_node

        renewed = renew_node(
            hub=args.hub,
            svid_dir=args.svid_dir,
            tcti=args.tpm,
            event_log=args.event_log.read_bytes() if args.event_log else None,
        )
        until = datetime.fromtimestamp(renewed.not_after, UTC)
        if args.json:
            view = {"spiffe_id": renewed.spiffe_id, "serial": f"{renewed.serial:x}", "expires_at": until.isoformat()}
            print(json.dumps(view))
        else:
            print(f"renewed {renewed.spiffe_id}: valid until {until:%Y-%m-%d %H:%M} UTC")
        return EXIT_OK
    return _status(args)


def _missing_svid(svid_dir: Path) -> str | None:
    """What `trustctl enroll` writes and the agent needs, said as "enroll first" when absent (the TLS
    library's own error names a file, not the step that makes it)."""
    enroll = (
        f"enroll first: trustctl enroll --hub URL --ca-bundle HUB-ROOTS.pem --tpm TCTI --device-class CLASS "
        f"--out {svid_dir}"
    )
    absent = [name for name in ("svid.pem", "svid.key", "bundle.pem") if not (svid_dir / name).is_file()]
    if absent:
        return f"--svid-dir {svid_dir}: no {', '.join(absent)}; {enroll}"
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate((svid_dir / "svid.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in names.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    except (OSError, ValueError, x509.ExtensionNotFound):
        uris = []
    if not uris:
        return f"--svid-dir {svid_dir}: svid.pem is not an X.509-SVID (no spiffe:// URI); {enroll}"
    return None


def _left(expires: float, now: float) -> str:
    seconds = int(expires - now)
    if seconds <= 0:
        return "EXPIRED"
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _status(args: argparse.Namespace) -> int:
    from edgetrust._internal.cli import EXIT_UNREACHABLE, fail

    try:
        view = json.loads((args.state_dir / "status.json").read_text())
    except (OSError, ValueError) as exc:
        message = f"no status in {args.state_dir} ({exc}); is the agent running?"
        return fail("trustctl agent status", message, EXIT_UNREACHABLE)
    now = time.time()
    view["stale"] = now - view["written_at"] > 30
    if args.json:
        print(json.dumps(view))
        return 0
    contact = view["last_hub_contact"]
    print(f"node {view['node']}: node SVID expires in {_left(view['node_svid_expires_at'], now)}")
    if contact is None:
        print("  hub: never reached")
    else:
        print(f"  hub: last reached {datetime.fromtimestamp(contact, UTC):%Y-%m-%d %H:%M:%S} UTC")
    if view["last_error"]:
        print(f"  last error: {view['last_error']}")
    for svid in view["svids"]:
        print(f"  {svid['spiffe_id']} ({', '.join(svid['selectors'])}): expires in {_left(svid['expires_at'], now)}")
    if view["stale"]:
        print("  WARNING: the status is over 30 s old: the agent may have stopped")
    return 0
