"""`trustctl fleet list | revoke | entry | cluster add`: the operator's commands, spoken to trustd over mTLS
with an operator SVID; and `trustctl fleet check FILE`, offline: the hub's fleet file checked as
`trustd serve --fleet` will read it (edgetrust/schemas/fleet.schema.json), in the fleet repository's CI or before
a deploy, without a hub or credentials.
It lives here, beside the other fleet commands, rather than under `trustd`: trustctl is the operator's tool,
the one the policy checks (`trustctl policy test`) already come with."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetrust._internal.cli import Parser


def add_parser(sub: argparse._SubParsersAction[Parser], help: str) -> None:
    from edgetrust._internal.cli import add_json

    fleet = sub.add_parser("fleet", help=help)
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    check = commands.add_parser("check", help="check a fleet file (trustd serve --fleet) before deploying it")
    check.add_argument("fleet_file", type=Path, help="the fleet file (YAML; see examples/fleet.yaml)")
    add_json(check)
    listing = commands.add_parser("list", help="enrolled nodes (SVID expiry, status) and clusters (policy revision)")
    _hub_args(listing)
    revoke = commands.add_parser("revoke", help="revoke a node (its TPM may not enroll again) or any SPIFFE ID")
    revoke.add_argument("target", help="SPIFFE ID, node name or EK fingerprint (at least 16 hex digits)")
    revoke.add_argument("--reason", default="", help="kept in the audit log")
    _hub_args(revoke)
    entry = commands.add_parser("entry", help="registration entries: which workloads on which node get which ID")
    entry_commands = entry.add_subparsers(dest="entry_command", required=True)
    create = entry_commands.add_parser("create", help="assign a SPIFFE ID to workloads matching selectors on a node")
    create.add_argument("--spiffe-id", required=True)
    create.add_argument("--parent", required=True, help="the node's SPIFFE ID (its agent serves the workload)")
    create.add_argument("--selector", action="append", required=True, help="e.g. unix:uid:1000 (repeatable: all)")
    create.add_argument("--ttl", type=int, default=3600, help="X.509-SVID lifetime, seconds")
    _hub_args(create)
    _hub_args(entry_commands.add_parser("list", help="every entry"))
    delete = entry_commands.add_parser("delete", help="remove an entry (its SVIDs stop renewing)")
    delete.add_argument("entry_id")
    _hub_args(delete)
    cluster = commands.add_parser("cluster", help="what a cluster needs from the hub (its workloads' identity)")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    add = cluster_commands.add_parser(
        "add",
        help="serve the cluster's identity to its syncer and webhook pods from any enrolled node of its site "
        "(entries under the site's node alias, selected by k8s:ns and k8s:sa); idempotent",
    )
    add.add_argument("cluster", help="the cluster's name in the fleet file")
    add.add_argument("--site", required=True, help="the site claim its nodes enrolled with (trustctl enroll --claim)")
    add.add_argument("--namespace", default="edgetrust-system", help="where the chart is installed")
    add.add_argument("--release", default="edgetrust", help="the chart's Helm release name (names its accounts)")
    add.add_argument(
        "--service-account",
        action="append",
        help="instead of the chart's syncer and webhook accounts (repeatable)",
    )
    add.add_argument("--ttl", type=int, default=3600, help="X.509-SVID lifetime, seconds")
    _hub_args(add)


def _hub_args(parser: Parser) -> None:
    from edgetrust._internal.cli import add_hub, add_json

    add_hub(parser)
    parser.add_argument("--ca-bundle", type=Path, required=True, help="roots that sign trustd's certificate")
    parser.add_argument("--svid", type=Path, required=True, help="your X.509-SVID (PEM), an operator of the hub")
    parser.add_argument("--svid-key", type=Path, required=True)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    from edgetrust._internal import hubclient
    from edgetrust._internal.cli import EXIT_OK, fail

    if args.fleet_command == "check":
        return check(args)
    sub = {"entry": "entry_command", "cluster": "cluster_command"}.get(args.fleet_command)
    action = f"fleet {args.fleet_command}" + (f" {getattr(args, sub)}" if sub else "")
    try:
        view = _call(args, action)
    except hubclient.HubCallError as exc:
        return fail(f"trustctl {action}", exc, exc.exit_code())
    if args.json:
        print(json.dumps(view))
    elif args.fleet_command == "list":
        print(render_list(view))
    elif args.fleet_command == "entry":
        print(render_entries(view))
    elif args.fleet_command == "cluster":
        print(render_cluster(view))
    else:
        print(f"revoked {view['spiffe_id']} (revocation list counter {view['counter']})")
        if view["ek_fingerprint"]:
            print(f"  its TPM (EK {view['ek_fingerprint'][:16]}…) may not enroll again")
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    """Exit 0 valid, 1 invalid (naming the field), 2 no such file; the groups and their members on success."""
    from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, fail
    from trustd.server.policy.distribution import DEFAULT_WAVES, Fleet, PolicyDistributionError

    prog = "trustctl fleet check"
    if not args.fleet_file.is_file():
        return fail(prog, f"{args.fleet_file}: no such file", EXIT_USAGE)
    try:
        fleet = Fleet.load(args.fleet_file)
    except PolicyDistributionError as exc:
        return fail(prog, exc, EXIT_REFUSED)
    groups: dict[str, dict[str, list[Any]]] = {
        name: {
            "clusters": fleet.members(group),
            "canary": list(group.canary),
            "waves": list(group.waves),
            "publishers": sorted(group.publishers),
        }
        for name, group in fleet.groups.items()
    }
    grouped = {c for view in groups.values() for c in view["clusters"]}
    outside = sorted(set(fleet.clusters) - grouped)
    if args.json:
        report = {"fleet_file": str(args.fleet_file), "valid": True, "groups": groups, "ungrouped": outside}
        print(json.dumps({**report, "operators": sorted(fleet.operators)}))
        return EXIT_OK
    sizes = f"{len(groups)} groups, {len(fleet.clusters)} clusters, {len(fleet.operators)} operators"
    print(f"{args.fleet_file}: valid: {sizes}")
    for name, view in groups.items():
        waves = "/".join(str(w) for w in view["waves"])
        waves += " (default)" if tuple(view["waves"]) == DEFAULT_WAVES else ""
        canary = f", canary {', '.join(view['canary'])}" if view["canary"] else ""
        publishers = ", ".join(view["publishers"]) or "nobody (no publisher: nothing can be published)"
        print(f"  group {name}: {len(view['clusters'])} clusters{canary}, waves {waves} %; published by {publishers}")
    if outside:
        print(f"  WARNING clusters in no group (they get no policy bundle): {', '.join(outside)}")
    return EXIT_OK


def _call(args: argparse.Namespace, action: str) -> dict[str, Any]:
    """The command's one call to the hub, mTLS with the operator's SVID."""
    from edgetrust._internal import hubclient

    context = hubclient.tls_context(args.ca_bundle, args.svid, args.svid_key)
    with hubclient.client(args.hub, context) as hub:
        if args.fleet_command == "list":
            return hubclient.call(hub, "GET", "/v1/fleet/nodes", action=action)
        if args.fleet_command == "cluster":
            body = {
                "site": args.site,
                "namespace": args.namespace,
                "service_accounts": args.service_account or chart_service_accounts(args.release),
                "ttl_s": args.ttl,
            }
            return hubclient.call(hub, "POST", f"/v1/fleet/clusters/{args.cluster}/identity", json=body, action=action)
        if args.fleet_command == "revoke":
            body = {"target": args.target, "reason": args.reason}
            return hubclient.call(hub, "POST", "/v1/fleet/revocations", json=body, action=action)
        if args.entry_command == "create":
            body = {"spiffe_id": args.spiffe_id, "parent_id": args.parent, "selectors": args.selector}
            return hubclient.call(hub, "POST", "/v1/fleet/entries", json={**body, "ttl_s": args.ttl}, action=action)
        if args.entry_command == "list":
            return hubclient.call(hub, "GET", "/v1/fleet/entries", action=action)
        return hubclient.call(hub, "DELETE", f"/v1/fleet/entries/{args.entry_id}", action=action)


def chart_service_accounts(release: str) -> list[str]:
    """The syncer's and the webhook's service accounts as charts/edgetrust names them (`edgetrust.fullname`:
    the release name when it contains the chart's name, else `<release>-edgetrust`, cut to 50 characters)."""
    fullname = release if "edgetrust" in release else f"{release}-edgetrust"
    fullname = fullname[:50].rstrip("-")
    return [f"{fullname}-syncer", f"{fullname}-webhook"]


def render_cluster(view: dict[str, Any]) -> str:
    lines = [f"cluster {view['cluster']}: {view['spiffe_id']} served under {view['parent_id']}"]
    for verb in ("created", "kept"):
        for entry in view[verb]:
            lines.append(f"  {verb:<8} entry {entry['id']}  {', '.join(entry['selectors'])}")
    return "\n".join(lines)


def render_entries(view: dict[str, Any]) -> str:
    if "deleted" in view:
        return f"deleted entry {view['deleted']}"
    entries = view.get("entries", [view])
    lines = [f"{'ENTRY':<34} {'SPIFFE ID':<44} {'NODE':<44} SELECTORS"]
    for entry in entries:
        lines.append(
            f"{entry['id']:<34} {entry['spiffe_id']:<44} {entry['parent_id']:<44} {', '.join(entry['selectors'])}"
        )
    return "\n".join(lines)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def render_list(view: dict[str, Any]) -> str:
    lines = [f"{'NODE':<48} {'CLASS':<14} {'STATUS':<9} SVID EXPIRES (UTC)"]
    for node in view["nodes"]:
        lines.append(
            f"{node['spiffe_id']:<48} {node['device_class']:<14} {node['status']:<9} {_when(node['svid_expires_at'])}"
        )
    if not view["nodes"]:
        lines.append("(no enrolled nodes)")
    if view["clusters"]:
        lines.append("")
        lines.append(f"{'CLUSTER':<32} {'REVISION':<28} {'RESULT':<10} LAST REPORT (UTC)")
        for name, cluster in sorted(view["clusters"].items()):
            lines.append(
                f"{name:<32} {cluster['revision'] or '-':<28} {cluster['result'] or '-':<10} "
                f"{_when(cluster['last_report'])}"
            )
    lines.append(f"revocation list counter: {view['revocations']}")
    return "\n".join(lines)
