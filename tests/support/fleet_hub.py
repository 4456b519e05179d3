"""A real trustd with every kind of caller it knows: operators, publishers, clusters of two groups, workloads,
and (given a software TPM) an enrolled node; each with an X.509-SVID from the hub's CA, as files, so tests
can speak to it over mTLS as any of them. Shared by the hub's security tests (authorization, input, fuzz)."""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.hub import RunningHub, running_hub
from localpeers.svid import issue_svid_files
from localpeers.webhook import LOOPBACK_SITE

DOMAIN = "edge.example"
OPERATOR = f"spiffe://{DOMAIN}/operator/admin"
PUBLISHER = f"spiffe://{DOMAIN}/operator/ci"
OTHER_GROUP_PUBLISHER = f"spiffe://{DOMAIN}/operator/stores-ci"  # publishes to OTHER_GROUP only
#: listed in the hub's configuration, then revoked by the operator
REVOKED_OPERATOR = f"spiffe://{DOMAIN}/operator/former"
REVOKED_PUBLISHER = f"spiffe://{DOMAIN}/operator/former-ci"
REVOKED_CLUSTER = f"spiffe://{DOMAIN}/cluster/site-r"
CLUSTER = f"spiffe://{DOMAIN}/cluster/site-a"  # group "gateways"
OTHER_GROUP_CLUSTER = f"spiffe://{DOMAIN}/cluster/store-1"  # group "stores"
WORKLOAD = f"spiffe://{DOMAIN}/workload/web"
GROUP = "gateways"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
OTHER_GROUP = "stores"

FLEET = {
    "groups": {
        # publishers are authorized per group: PUBLISHER publishes to GROUP only
        GROUP: {
            "matchLabels": {"site-class": "edge-gateway"},
            "waves": [100],
            "publishers": [PUBLISHER, REVOKED_PUBLISHER],
        },
        OTHER_GROUP: {"matchLabels": {"site-class": "store"}, "waves": [100], "publishers": [OTHER_GROUP_PUBLISHER]},
    },
    "clusters": {
        "site-a": {"labels": {"site-class": "edge-gateway"}},
        "site-r": {"labels": {"site-class": "edge-gateway"}},
        "store-1": {"labels": {"site-class": "store"}},
    },
    "operators": [OPERATOR, REVOKED_OPERATOR],
}


@dataclass
class FleetHub:
    running: RunningHub
    work: Path
    signing_key: ec.EllipticCurvePrivateKey
    key_id: str
    svids: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def svid(self, spiffe_id: str) -> tuple[Path, Path]:
        if spiffe_id not in self.svids:
            name = spiffe_id.rsplit("/", 2)[-2] + "-" + spiffe_id.rsplit("/", 1)[-1]
            self.svids[spiffe_id] = issue_svid_files(self.running.hub.ca, spiffe_id, self.work / "svids" / name)
        return self.svids[spiffe_id]

    def client(self, spiffe_id: str | None = None, *, svid: tuple[Path, Path] | None = None) -> httpx.Client:
        """An HTTPS client of the hub: anonymous, as `spiffe_id` (an SVID issued now), or with `svid` files."""
        context = ssl.create_default_context(cafile=str(self.running.ca_bundle))
        files = svid if svid is not None else self.svid(spiffe_id) if spiffe_id is not None else None
        if files is not None:
            context.load_cert_chain(str(files[0]), str(files[1]))
        return httpx.Client(base_url=self.running.url, verify=context, timeout=30)

    def signed_bundle(self, counter: int, group: str = GROUP) -> bytes:
        """The repository's policies as a bundle for `group` signed by the fleet's publisher key, its manifest
        carrying `counter` whatever it is (build_files would refuse an illegal one; an attacker's tool would not)."""
        files = build_files(
            read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="abc", group=group
        )
        manifest = json.loads(files[".manifest"])
        manifest["revision"] = f"{counter:012d}-abc"
        manifest["metadata"]["counter"] = counter
        files[".manifest"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        pem = self.signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pack(sign_files(files, SigningKey.from_pem(self.key_id, pem)))

    def revoke(self, target: str) -> None:
        with self.client(OPERATOR) as operator:
            answer = operator.post("/v1/fleet/revocations", json={"target": target, "reason": "test"})
        if answer.status_code != 200:
            raise RuntimeError(f"revoking {target}: {answer.status_code} {answer.text}")


@contextmanager
def running_fleet_hub(
    work: Path,
    *,
    ek_roots: Path,
    fleet: dict[str, object] | None = None,
    replica_of: FleetHub | None = None,
    **settings: object,
) -> Iterator[FleetHub]:
    """trustd with policy distribution (`fleet`, FLEET by default) and its operators; REVOKED_* are revoked
    before it is yielded.

    With `replica_of` (a hub on a shared PostgreSQL store: give the same `store_url`), another replica of that
    hub: a data directory of its own that holds only the keys both must share (the CA's and the revocation
    list's, as a deployment mounts them on every replica), the same fleet file and publisher keys; everything
    else it knows comes from the store."""
    work.mkdir(parents=True, exist_ok=True)
    signing = replica_of.signing_key if replica_of is not None else ec.generate_private_key(ec.SECP256R1())
    keys = work / "publisher-keys"
    keys.mkdir(exist_ok=True)
    (keys / "ci-1.pem").write_bytes(
        signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fleet_file = work / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet if fleet is not None else FLEET))
    if replica_of is not None:
        first = replica_of.running.hub.settings
        data_dir = work / "hub" / "hub"  # running_hub's
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copytree(first.ca_dir, data_dir / "ca")
        shutil.copytree(first.revocations_dir, data_dir / "revocations")
    with running_hub(
        work / "hub",
        ek_roots=ek_roots,
        fleet_file=fleet_file,
        policy_keys_dir=keys,
        trust_domain=DOMAIN,
        **settings,  # type: ignore[arg-type]  # TrustdSettings' fields, checked by pydantic
    ) as running:
        hub = FleetHub(running, work, signing, "ci-1")
        if replica_of is None:
            for revoked in (REVOKED_OPERATOR, REVOKED_PUBLISHER, REVOKED_CLUSTER):
                hub.revoke(revoked)
        yield hub
