"""A cluster's node attestation status: which of its nodes the hub last saw attest, when, and which are revoked.

Why a signed document: the webhook refuses to bind a pod to a node whose attestation is revoked or too old
(admission/nodegate.py), and it must not take that from anything in the cluster. Node objects, their labels and
annotations are written by the kubelet, so a compromised node could pose as another; the ConfigMap that carries
the document is writable by whoever holds the syncer's Role. So the hub signs the document with its revocation
key (the key clusters already trust for the revocation list: the hub's own authority over the identities it
issued), and each webhook replica verifies it: the signature, the cluster it names, and a sequence not lower
than the one it holds (a replay of an older document is refused).

The format is the hub's other signed documents' (an OPA-style bundle, `edgetrust/bundles/signing.py`), with its
own root, `edgetrust/nodes`, so a revocation bundle (root `edgetrust/revocations`) never reads as one:

    .manifest   {"revision": "<sequence>-nodes-<cluster>", "roots": ["edgetrust/nodes"],
                 "metadata": {"counter": <sequence>, "cluster": <cluster>}}
    edgetrust/nodes/nodes.json
                {"cluster", "site", "issued_at", "max_age_s",
                 "nodes": {<node claim>: {"spiffe_id", "last_attested", "revoked"}}}

`last_attested` is the time of the node's last quote-verified enrollment or renewal at the hub. The webhook
judges it against its own clock, so a document that stops coming (the hub unreachable) makes nodes stale on
its own, max_age_s after their last attestation: a partition is never a way to keep a node bindable forever.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.errors import BundleError, BundleFormatError, RollbackError
from edgetrust.bundles.format import MANIFEST, ROOT, Bundle, pack, unpack
from edgetrust.bundles.handoff import MAX_HANDOFF_BYTES, HandoffTooLargeError, binary_item
from edgetrust.bundles.signing import SigningKey, sign_files, verify_bundle

NODES_ROOT = f"{ROOT}/nodes"
#: not `data.json`: the document is never loaded into OPA, so it is signed as bytes (a SHA-256 of the file),
#: not as OPA's canonical JSON, which costs ~30 ms per 1,000 nodes to hash (benchmarks/bench_node_gate.py)
DATA = f"{NODES_ROOT}/nodes.json"
#: the default of a cluster group's `nodeAttestationMaxAge`: a node agent renews its SVID (with a fresh quote)
#: at about half its lifetime, 2 h for the hub's default 4 h SVID; 6 h leaves two renewals' slack
DEFAULT_MAX_AGE_S = 6 * 3600
#: a document lists the nodes of one site; a cap keeps a hostile one from growing a replica's memory
MAX_NODES = 10_000

CONFIGMAP = "edgetrust-node-attestation"
KEY_NODES = "nodes.tar.gz"
KEY_REVOCATIONS = "revocations.tar.gz"
SEQUENCE_ANNOTATION = "edgetrust.io/node-attestation-sequence"


class NodeStatusError(BundleError):
    code = "node_status_refused"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    spiffe_id: str
    last_attested: float
    revoked: bool


@dataclass(frozen=True, slots=True)
class NodeAttestation:
    cluster: str
    site: str
    sequence: int
    issued_at: float
    max_age_s: int
    nodes: Mapping[str, NodeRecord]


def build(
    *,
    cluster: str,
    site: str,
    sequence: int,
    issued_at: float,
    max_age_s: int,
    nodes: Mapping[str, NodeRecord],
    key: SigningKey,
) -> bytes:
    """The signed document (the hub's side)."""
    manifest = {
        "revision": f"{sequence:015d}-nodes-{cluster}",
        "roots": [NODES_ROOT],
        "metadata": {"counter": sequence, "cluster": cluster},
    }
    data = {
        "cluster": cluster,
        "site": site,
        "issued_at": issued_at,
        "max_age_s": max_age_s,
        "nodes": {
            name: {"spiffe_id": n.spiffe_id, "last_attested": n.last_attested, "revoked": n.revoked}
            for name, n in sorted(nodes.items())
        },
    }
    files = {
        MANIFEST: json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
        DATA: json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
    }
    return pack(sign_files(files, key))


def verify(
    blob: bytes, keys: Mapping[str, ec.EllipticCurvePublicKey], *, cluster: str, held: int = -1
) -> NodeAttestation:
    """The document, if the hub's key signed it for `cluster` and its sequence is not below `held`."""
    bundle = unpack(blob)
    verify_bundle(bundle, keys)
    found = _parse(bundle)
    if found.cluster != cluster:
        raise NodeStatusError(
            f"node attestation document {bundle.revision} is for cluster {found.cluster!r}, this is {cluster!r}: "
            "refused (another cluster's document)"
        )
    if found.sequence < held:
        raise RollbackError(
            f"node attestation document {bundle.revision} (sequence {found.sequence}) is older than the one held "
            f"(sequence {held}): refused (a replay)"
        )
    return found


def _parse(bundle: Bundle) -> NodeAttestation:
    if list(bundle.manifest.get("roots") or []) != [NODES_ROOT]:
        roots = bundle.manifest.get("roots")
        raise BundleFormatError(f"a node attestation document has roots [{NODES_ROOT!r}], not {roots}")
    metadata = bundle.manifest.get("metadata") or {}
    raw = bundle.files.get(DATA)
    if raw is None:
        raise BundleFormatError(f"a node attestation document holds {DATA}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleFormatError(f"{DATA} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(metadata, dict):
        raise BundleFormatError("node attestation data must be an object")
    try:
        nodes_raw = data["nodes"]
        if not isinstance(nodes_raw, dict) or len(nodes_raw) > MAX_NODES:
            raise BundleFormatError(f"node attestation `nodes` must be an object of at most {MAX_NODES} nodes")
        nodes = {str(name): _node(value) for name, value in nodes_raw.items()}
        found = NodeAttestation(
            cluster=_text(data["cluster"]),
            site=_text(data["site"]),
            sequence=bundle.counter,
            issued_at=_time(data["issued_at"]),
            max_age_s=int(data["max_age_s"]),
            nodes=nodes,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleFormatError(f"node attestation document is malformed: {exc!r}") from exc
    if metadata.get("cluster") != found.cluster:
        raise BundleFormatError("node attestation manifest and data name different clusters")
    if found.max_age_s <= 0:
        raise BundleFormatError("node attestation max_age_s must be positive")
    return found


def _node(value: Any) -> NodeRecord:
    if not isinstance(value, dict) or not isinstance(value.get("revoked"), bool):
        raise BundleFormatError(f"node entry {value!r} is not {{spiffe_id, last_attested, revoked}}")
    return NodeRecord(_text(value["spiffe_id"]), _time(value["last_attested"]), value["revoked"])


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BundleFormatError(f"{value!r} is not a string")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BundleFormatError(f"{value!r} is not a time in seconds")
    return float(value)


# -- the handoff ConfigMap (the syncer writes it, the webhook reads it; edgetrust/bundles/handoff.py says why) --


def configmap(
    nodes_blob: bytes, revocations_blob: bytes | None, *, namespace: str, sequence: int, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The ConfigMap carrying the signed document and the signed revocation list, bytes unchanged."""
    items = {KEY_NODES: nodes_blob}
    if revocations_blob is not None:
        items[KEY_REVOCATIONS] = revocations_blob
    total = sum(len(b) for b in items.values())
    if total > MAX_HANDOFF_BYTES:
        raise HandoffTooLargeError(
            f"node attestation document and revocation list are {total} bytes, over the {MAX_HANDOFF_BYTES} a "
            "ConfigMap carries: not handed over (the webhook's held document goes stale, and binding fails closed)"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {SEQUENCE_ANNOTATION: str(sequence)},
        },
        "binaryData": {k: base64.b64encode(v).decode() for k, v in items.items()},
    }


def configmap_item(obj: Mapping[str, Any], key: str) -> bytes | None:
    """One signed blob the ConfigMap carries, still unverified (None: not there); over the limit is refused."""
    return binary_item(obj, key, configmap=CONFIGMAP)
