"""Names that end in a newline, against the real trustd and against every validator of the tree.

Python's `$` matches before a final newline, so `re.match(r"^...$")` accepted `spiffe://edge.example/web\n`:
an identity that looks like another in every log and UI, and that no one meant to issue. Every validating
regex now matches the whole input (`fullmatch`). The attacks run against a real trustd (an operator
registering an entry, a device enrolling with a claim ending in a newline) and assert the refusal and that
nothing was stored; the parametrized test covers each validator.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from admission.errors import AdmissionError
from admission.imageref import parse_image_reference
from admission.policy import load_policy
from admission.registry import RegistryClient
from admission.rego.gatekeeper import parse_template
from edgetrust.bundles.networkpolicy import validate_network_policy
from edgetrust.spiffe.id import SpiffeId, TrustDomain, render_spiffe_id
from localpeers.hub import RunningHub, running_hub
from localpeers.nodes import enroll_node
from localpeers.svid import issue_svid_files
from tests.integration.conftest import BootedDevice
from trustd.errors import TrustdError
from trustd.server.federation import Peer

OPERATOR = "spiffe://edge.example/operator/admin"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def hub(tmp_path: Path, ek_roots: Path) -> Iterator[RunningHub]:
    with running_hub(tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,)) as running:
        yield running


def _operator(hub: RunningHub, directory: Path) -> httpx.Client:
    cert, key = issue_svid_files(hub.hub.ca, OPERATOR, directory)
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=hub.url, verify=context, timeout=30)


@pytest.mark.integration
def test_entry_with_a_spiffe_id_ending_in_a_newline_is_refused(hub: RunningHub, tmp_path: Path) -> None:
    node = "spiffe://edge.example/site/lab/node/gw-01"
    with _operator(hub, tmp_path / "operator") as operator:
        for spiffe_id, parent in (
            ("spiffe://edge.example/workload/web\n", node),
            ("spiffe://edge.example/w", node + "\n"),
        ):
            body = {"spiffe_id": spiffe_id, "parent_id": parent, "selectors": ["unix:uid:0"]}
            refused = operator.post("/v1/fleet/entries", json=body)
            assert refused.status_code == 400, refused.text  # bad input (finding 8's status map), not a refusal
            assert refused.json()["error"] == "invalid_spiffe_id"
        assert operator.get("/v1/fleet/entries").json()["entries"] == []
        # the same request without the newline is taken: the refusal was the newline
        body = {"spiffe_id": "spiffe://edge.example/workload/web", "parent_id": node, "selectors": ["unix:uid:0"]}
        assert operator.post("/v1/fleet/entries", json=body).status_code == 200
    assert [e.spiffe_id for e in hub.hub.store.entries()] == ["spiffe://edge.example/workload/web"]


@pytest.mark.integration
def test_enrollment_with_a_claim_ending_in_a_newline_gets_no_identity(
    hub: RunningHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    with pytest.raises(TrustdError, match="cannot be a SPIFFE ID path segment"):
        enroll_node(
            hub.url,
            hub.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "svid",
            node="gw-01\n",
        )
    assert hub.hub.store.devices() == []
    assert not (tmp_path / "svid" / "svid.pem").exists()
    # the same TPM with the name it meant is enrolled: nothing of the refused attempt stuck to it
    enrolled = enroll_node(
        hub.url, hub.ca_bundle, tcti=golden_device.tcti, event_log=golden_device.event_log, out_dir=tmp_path / "ok"
    )
    assert enrolled.spiffe_id == "spiffe://edge.example/site/lab/node/gw-01"


def _policy(name: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        (directory / "policy.yaml").write_text(yaml.safe_dump({"name": name}))
        (directory / "policy.rego").write_text("package x\n")
        load_policy(directory / "policy.yaml")


def _template(kind: str) -> None:
    rego = f'package {kind.strip().lower()}\nviolation[{{"msg": "x"}}] {{ false }}\n'
    document = {
        "metadata": {"name": kind.lower()},  # the name check alone would not see the newline
        "spec": {
            "crd": {"spec": {"names": {"kind": kind}}},
            "targets": [{"target": "admission.k8s.gatekeeper.sh", "rego": rego}],
        },
    }
    parse_template(document, "test")


def _network_policy(field: str, value: str) -> None:
    document = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": value if field == "name" else "web",
            "namespace": value if field == "namespace" else "prod",
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": value if field == "port" else 80}]}],
        },
    }
    problem = validate_network_policy(document)
    if problem is not None:
        raise ValueError(problem)


def _federation(trust_domain: str, endpoint: str = "spiffe://peer.example/bundle-endpoint") -> None:
    with tempfile.TemporaryDirectory() as work:
        peer = {"trust_domain": trust_domain, "bundle_endpoint_url": "https://127.0.0.1:1/bundle"}
        peer |= {"endpoint_spiffe_id": endpoint, "bootstrap_bundle": "peer.json"}
        (Path(work) / "federation.yaml").write_text(yaml.safe_dump({"federates_with": [peer]}))
        Peer.load_all(Path(work) / "federation.yaml")


def _blob(digest: str) -> None:
    async def fetch() -> None:
        client = RegistryClient()
        try:
            await client.blob(parse_image_reference("127.0.0.1:1/app:v1"), digest)
        finally:
            await client.aclose()

    asyncio.run(fetch())


#: (what, validator, a valid value): the value is accepted, the value with "\n" appended is refused
VALIDATORS: list[tuple[str, Callable[[str], object], str]] = [
    ("trust domain", TrustDomain.parse, "edge.example"),
    ("SPIFFE ID", SpiffeId.parse, "spiffe://edge.example/workload/web"),
    ("SPIFFE ID trust domain", lambda v: SpiffeId.parse(f"spiffe://{v}/web"), "edge.example"),
    ("enrollment claim", lambda v: render_spiffe_id("/node/{node}", TrustDomain("edge.example"), node=v), "gw-01"),
    ("image tag", lambda v: parse_image_reference(f"registry.example/app:{v}"), "v1"),
    ("image digest", lambda v: parse_image_reference(f"registry.example/app@{v}"), DIGEST),
    ("image repository", parse_image_reference, "registry.example/team/app"),
    ("image registry host", lambda v: parse_image_reference(f"{v}/app:v1"), "registry.example:5000"),
    ("policy name", _policy, "require_limits"),
    ("Gatekeeper kind", _template, "K8sRequiredLabels"),
    ("federation trust domain", _federation, "peer.example"),
    ("federation endpoint SPIFFE ID", lambda v: _federation("peer.example", v), "spiffe://peer.example/endpoint"),
    ("NetworkPolicy name", lambda v: _network_policy("name", v), "web"),
    ("NetworkPolicy namespace", lambda v: _network_policy("namespace", v), "prod"),
    ("NetworkPolicy port name", lambda v: _network_policy("port", v), "http"),
]


@pytest.mark.parametrize(("what", "validator", "valid"), VALIDATORS, ids=[v[0] for v in VALIDATORS])
def test_each_validator_refuses_a_trailing_newline(what: str, validator: Callable[[str], object], valid: str) -> None:
    validator(valid)
    with pytest.raises((TrustdError, AdmissionError, ValueError)):
        validator(valid + "\n")


def test_registry_refuses_a_blob_digest_ending_in_a_newline() -> None:
    with pytest.raises(AdmissionError, match="is not sha256"):
        _blob(DIGEST + "\n")
    with pytest.raises(AdmissionError) as unreachable:  # the digest itself passes: the fetch is tried
        _blob(DIGEST)
    assert "is not sha256" not in str(unreachable.value)


def test_a_federation_trust_domain_that_is_a_path_is_refused() -> None:
    """It names the file the fetched bundle is written to: `../x` would write outside the data directory."""
    with pytest.raises(TrustdError, match="trust domain"):
        _federation("../../ca/ca")
