"""Attacks on attestation-aware binding, against the real components: a kube-apiserver calling the served
webhook (TLS) for pods and pods/binding, the webhook following the ConfigMap edgetrust-node-attestation.

Whoever can write that ConfigMap (the syncer's Role), or a node's kubelet (its Node object), is the attacker
here. Each attack must leave pods unbound with a reason that names the node and why, and the document the
webhook held before must stay in force (a refused ConfigMap never replaces it).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import pack
from tests.support.binding_rig import (
    BindingRig,
    binding_rig,
    document,
    public_pem,
    revocation_list,
    signing_key,
    spiffe_of,
)

pytestmark = pytest.mark.integration

HUB = ec.generate_private_key(ec.SECP256R1())
KEY = signing_key(HUB)
_sequence = itertools.count(100)
_pods = itertools.count()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindingRig]:
    with binding_rig(tmp_path_factory.mktemp("binding"), public_pem(HUB)) as found:
        yield found


def hold(rig: BindingRig, nodes: dict[str, tuple[float, bool]], *, revoked: list[str] | None = None) -> int:
    """A good document (and revocation list) in the ConfigMap, and the webhook holding it."""
    sequence = next(_sequence)
    listed = revocation_list(KEY, sequence, revoked) if revoked is not None else None
    rig.put(document(KEY, sequence, nodes), listed, sequence=sequence)
    rig.wait_held(sequence=sequence)
    return sequence


def refused_binding(rig: BindingRig, node: str) -> str:
    pod = f"p{next(_pods)}"
    rig.pending_pod(pod)
    answer = rig.bind(pod, node)
    assert answer.status_code == 403, answer.text
    assert rig.node_of(pod) == ""
    return str(answer.json()["message"])


def bound(rig: BindingRig, node: str) -> None:
    pod = f"p{next(_pods)}"
    rig.pending_pod(pod)
    answer = rig.bind(pod, node)
    assert answer.status_code == 201, answer.text
    assert rig.node_of(pod) == node


def fresh() -> tuple[float, bool]:
    return (time.time(), False)


def test_a_revoked_node_gets_no_pods(rig: BindingRig) -> None:
    hold(rig, {"gw-01": fresh(), "gw-02": (time.time(), True)})
    bound(rig, "gw-01")
    message = refused_binding(rig, "gw-02")
    assert f"node 'gw-02' ({spiffe_of('gw-02')}) is revoked at the hub" in message


def test_a_node_revoked_in_the_revocation_list_only_gets_no_pods(rig: BindingRig) -> None:
    """The document may predate the revocation; the signed list relayed beside it is enough."""
    hold(rig, {"gw-01": fresh(), "gw-03": fresh()}, revoked=[spiffe_of("gw-03")])
    bound(rig, "gw-01")
    assert "is revoked at the hub" in refused_binding(rig, "gw-03")


def test_a_stale_node_gets_no_pods(rig: BindingRig) -> None:
    hold(rig, {"gw-01": fresh(), "gw-old": (time.time() - 7200, False)})  # max age 3600 s
    message = refused_binding(rig, "gw-old")
    assert "node 'gw-old'" in message
    assert "last attested at the hub" in message
    assert "over the cluster group's maximum of 3600 s" in message


def test_an_unknown_node_gets_no_pods(rig: BindingRig) -> None:
    hold(rig, {"gw-01": fresh()})
    message = refused_binding(rig, "gw-unknown")
    assert "node 'gw-unknown' was never attested at the hub" in message


def test_a_pod_naming_a_revoked_node_itself_is_refused(rig: BindingRig) -> None:
    hold(rig, {"gw-01": fresh(), "gw-02": (time.time(), True)})
    answer = rig.create_on_node(f"p{next(_pods)}", "gw-02")
    assert answer.status_code == 403
    assert "node 'gw-02'" in answer.json()["message"]
    assert "is revoked at the hub" in answer.json()["message"]
    assert rig.create_on_node(f"p{next(_pods)}", "gw-01").status_code == 201


def test_a_forged_document_is_refused_and_the_held_one_stays(rig: BindingRig) -> None:
    held = hold(rig, {"gw-01": fresh()})
    forger = signing_key(ec.generate_private_key(ec.SECP256R1()))  # same key id, another key
    rig.put(document(forger, held + 1000, {"gw-01": fresh(), "gw-evil": fresh()}))
    status = rig.wait_held(failure="does not verify")
    assert status["sequence"] == held
    assert "never attested" in refused_binding(rig, "gw-evil")
    bound(rig, "gw-01")


def test_another_clusters_document_is_refused(rig: BindingRig) -> None:
    """Signed by the real hub key, for another cluster: its nodes are not ours."""
    held = hold(rig, {"gw-01": fresh()})
    rig.put(document(KEY, held + 1000, {"gw-01": fresh(), "far-01": fresh()}, cluster="edge-2"))
    status = rig.wait_held(failure="another cluster's document")
    assert status["sequence"] == held
    assert "never attested" in refused_binding(rig, "far-01")


def test_a_replayed_older_document_is_refused(rig: BindingRig) -> None:
    """The older document, validly signed, showed gw-04 fresh; the newer one revoked it."""
    older = document(KEY, next(_sequence), {"gw-04": fresh()})
    newer = hold(rig, {"gw-04": (time.time(), True)})
    rig.put(older)
    status = rig.wait_held(failure="a replay")
    assert status["sequence"] == newer
    assert "is revoked at the hub" in refused_binding(rig, "gw-04")


def test_an_older_revocation_list_is_refused(rig: BindingRig) -> None:
    held = hold(rig, {"gw-05": fresh()}, revoked=[spiffe_of("gw-05")])
    rig.put(document(KEY, held + 1, {"gw-05": fresh()}), revocation_list(KEY, 1, []))
    rig.wait_held(failure="older than the one held")
    assert "is revoked at the hub" in refused_binding(rig, "gw-05")


def test_a_tampered_configmap_is_refused(rig: BindingRig) -> None:
    """The document's data edited in place (gw-06 un-revoked), its signature kept."""
    held = hold(rig, {"gw-06": (time.time(), True)})
    files = _files(document(KEY, held + 1, {"gw-06": (time.time(), True)}))
    data = json.loads(files["edgetrust/nodes/nodes.json"])
    data["nodes"]["gw-06"]["revoked"] = False
    files["edgetrust/nodes/nodes.json"] = json.dumps(data).encode()
    rig.put(pack(files))
    status = rig.wait_held(failure="does not match its signed hash")
    assert status["sequence"] == held
    assert "is revoked at the hub" in refused_binding(rig, "gw-06")


def test_a_revocation_list_posing_as_the_document_is_refused(rig: BindingRig) -> None:
    """Signed by the same hub key, but another document: its roots give it away."""
    held = hold(rig, {"gw-01": fresh()})
    rig.put(revocation_list(KEY, held + 5, []))
    status = rig.wait_held(failure="a node attestation document has roots")
    assert status["sequence"] == held


def test_a_node_relabelled_to_pose_as_another_gets_no_pods(rig: BindingRig) -> None:
    """Node objects, labels and annotations are the kubelet's to write: none of them maps a node to an identity."""
    hold(rig, {"gw-01": fresh()})
    poser = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "gw-poser",
            "labels": {"kubernetes.io/hostname": "gw-01", "edgetrust.io/node": "gw-01"},
            "annotations": {"edgetrust.io/spiffe-id": spiffe_of("gw-01"), "edgetrust.io/node": "gw-01"},
        },
    }
    with rig.kube.client() as client:
        assert client.post("/api/v1/nodes", json=poser).status_code == 201
    assert "node 'gw-poser' was never attested at the hub" in refused_binding(rig, "gw-poser")


def test_a_webhook_with_no_document_fails_closed(tmp_path: Path) -> None:
    with binding_rig(tmp_path / "rig", public_pem(HUB)) as empty:
        assert empty.readyz()["node_attestation"]["sequence"] is None
        message = refused_binding(empty, "gw-01")
        assert "no node attestation status from the hub yet" in message
        assert "'gw-01'" in message
        direct = empty.create_on_node("direct", "gw-01")
        assert direct.status_code == 403
        assert "no node attestation status from the hub yet" in direct.json()["message"]
        # a ConfigMap that does not verify leaves it closed
        empty.put(document(signing_key(ec.generate_private_key(ec.SECP256R1())), 1, {"gw-01": fresh()}))
        empty.wait_held(failure="does not verify")
        assert "no node attestation status from the hub yet" in refused_binding(empty, "gw-01")


def _files(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
