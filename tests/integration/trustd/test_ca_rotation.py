"""CA rotation without downtime, seen by a workload through the real py-spiffe client: the next CA is in the
bundle before it signs; after activation new SVIDs chain to it while SVIDs of the old CA (and its JWT-SVIDs)
still verify; the old CA leaves the bundle once its last SVID has expired. Activating too early is refused."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from spiffe import WorkloadApiClient

from edgetrust.spiffe.id import SpiffeId
from localpeers.hub import RunningHub, running_hub
from localpeers.nodes import enroll_node
from localpeers.processes import running
from localpeers.spire import wait_for_svid
from localpeers.svid import issue_svid_files
from tests.integration.conftest import BootedDevice
from trustd.cli.server import main as trustd
from trustd.cli.trustctl import main as trustctl
from trustd.errors import CAConfigError
from trustd.server.ca import keystore, rotation

pytestmark = pytest.mark.integration
OPERATOR = "spiffe://edge.example/operator/admin"


@pytest.fixture
def workload(
    tmp_path: Path, ek_roots: Path, golden_device: BootedDevice
) -> Iterator[tuple[RunningHub, Path, list[str]]]:
    with running_hub(tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,)) as hub:
        node = enroll_node(
            hub.url,
            hub.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "svid",
        )
        cert, key = issue_svid_files(hub.hub.ca, OPERATOR, tmp_path / "operator")
        hub_args = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]
        argv = ["fleet", "entry", "create", "--spiffe-id", "spiffe://edge.example/workload/a", "--parent"]
        assert trustctl([*argv, node.spiffe_id, "--selector", f"unix:uid:{os.getuid()}", *hub_args]) == 0
        socket_path = tmp_path / "agent.sock"
        agent = [str(Path(sys.executable).parent / "trustctl"), "agent", "run", "--hub", hub.url, "--svid-dir"]
        agent += [str(tmp_path / "svid"), "--socket", str(socket_path), "--state-dir", str(tmp_path / "state")]
        with running([*agent, "--entry-poll", "1"], ready=socket_path.exists, log=tmp_path / "agent.log"):
            wait_for_svid(socket_path, "spiffe://edge.example/workload/a")
            yield hub, socket_path, hub_args


def context(socket_path: Path) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
    try:
        found = client.fetch_x509_context()
    finally:
        client.close()
    authorities = [a for bundle in found.x509_bundle_set.bundles for a in bundle.x509_authorities]
    return list(found.default_svid.cert_chain), authorities


def chains_to(leaf: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    for authority in authorities:
        try:
            leaf.verify_directly_issued_by(authority)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def until(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out: {what}")


def test_rotation_keeps_every_svid_valid(workload: tuple[RunningHub, Path, list[str]]) -> None:
    hub, socket_path, hub_args = workload
    ca_dir = hub.hub.settings.ca_dir
    data = ["--data-dir", str(hub.hub.settings.data_dir), "--trust-domain", "edge.example"]
    old_chain, old_bundle = context(socket_path)
    assert len(old_bundle) == 1
    workload_a = SpiffeId.parse("spiffe://edge.example/workload/a")
    old_token = hub.hub.ca.issue_jwt_svid(workload_a, audience=["x"], ttl=timedelta(minutes=5))

    assert trustd(["ca", "prepare", *data]) == 0
    with pytest.raises(CAConfigError, match="wait"):  # published for 0 s: too early to sign with it
        rotation.activate(ca_dir, keep_for=timedelta(hours=1), min_published=timedelta(minutes=15))
    # the hub's CA-rotation watcher takes each step by itself (within its 5 s interval)
    until(lambda: len(context(socket_path)[1]) == 2, "the workload to see the next CA in its bundle")
    chain, bundle = context(socket_path)
    assert chain[0].issuer == old_chain[0].issuer  # published, not yet signing

    assert trustd(["ca", "activate", *data, "--keep-for", "3600", "--min-published", "0"]) == 0
    until(
        lambda: hub.hub.ca.certificate.serial_number != old_bundle[0].serial_number,
        "the hub's watcher to take the activation",
    )
    new_root = hub.hub.ca.certificate
    assert new_root.serial_number != old_bundle[0].serial_number
    # a new entry gets an SVID from the new CA; the old SVID still verifies against the bundle served now
    argv = ["fleet", "entry", "create", "--spiffe-id", "spiffe://edge.example/workload/b", "--parent"]
    node_id = hub.hub.store.devices()[0].spiffe_id
    assert trustctl([*argv, node_id, "--selector", f"unix:gid:{os.getgid()}", *hub_args]) == 0
    client = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
    try:
        until(lambda: len(client.fetch_x509_svids()) == 2, "the SVID of the new entry")
        svids = {str(s.spiffe_id): s for s in client.fetch_x509_svids()}
        bundle = [a for b in client.fetch_x509_bundles().bundles for a in b.x509_authorities]
    finally:
        client.close()
    assert chains_to(svids["spiffe://edge.example/workload/b"].leaf, [new_root])
    assert chains_to(old_chain[0], bundle), "an SVID of the old CA still verifies during the overlap"
    assert str(hub.hub.ca.validate_jwt_svid(old_token, audience="x")) == "spiffe://edge.example/workload/a"

    # once the old CA's SVIDs have all expired, it leaves the bundle
    later = time.time() + 3601
    assert len(keystore.published(ca_dir, now=later).certificates) == 0
    until(
        lambda: [c.serial_number for c in hub.hub.ca.x509_authorities()] == [new_root.serial_number],
        "the hub's watcher to drop the expired CA from the bundle",
    )
