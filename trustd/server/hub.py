"""Assemble a running hub from its settings: store, CA, EK roots, reference values, TLS, HTTP app.

This is the one place that turns configuration into objects; everything below it receives what it needs.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from attestation.ek import EKVerifier
from attestation.errors import PolicyConfigError
from attestation.refvalues import ReferencePolicy
from edgetrust._internal import saturation, serving
from edgetrust._internal.files import write_private
from edgetrust._internal.tls import PeerCertificateProtocol
from edgetrust.bundles.signing import load_verification_keys
from edgetrust.spiffe.id import ReservedNames, SpiffeId, TrustDomain
from trustd.errors import TrustdError
from trustd.server.app import create_app
from trustd.server.ca import SpiffeCA, material
from trustd.server.enrollment import EnrollmentPolicy, EnrollmentService
from trustd.server.federation import Federation
from trustd.server.policy.clusterstatus import ClusterStatus
from trustd.server.policy.distribution import Fleet, PolicyBundles, verified_bundle
from trustd.server.policy.legacy import import_data_dir
from trustd.server.revocations import Revocations
from trustd.server.settings import TrustdSettings
from trustd.server.store import Store, open_store

log = logging.getLogger(__name__)

#: trustd's own serving certificate is renewed at every start; a day covers any single run of a test or demo
SERVER_CERT_TTL = timedelta(days=1)
KEEP_ALIVE_S = 120


@dataclass
class Hub:
    settings: TrustdSettings
    ca: SpiffeCA
    store: Store
    service: EnrollmentService
    app: FastAPI
    tls_cert: Path
    tls_key: Path
    client_roots: Path
    revocations: Revocations
    federation: Federation
    policy: PolicyBundles | None = None
    trust: material.TrustMaterial | None = None

    def close(self) -> None:
        self.service.close()  # the refusal counts still in memory
        self.store.close()
        if self.trust is not None:
            self.trust.close()


def _attestation_config(settings: TrustdSettings) -> tuple[EKVerifier, ReferencePolicy]:
    """The EK roots and the reference values, a mistake in either named with the flag that gives it."""
    try:
        ek_verifier = EKVerifier.from_directory(settings.ek_roots_dir)
    except PolicyConfigError as exc:
        raise PolicyConfigError(
            f"{exc} (--ek-roots DIR: the TPM vendors' EK root and intermediate certificates, one .pem/.crt/.cer/.der "
            "file each; for a swtpm test device, its local CA's: docs/quickstart.md, step 2)"
        ) from exc
    try:
        reference_policy = ReferencePolicy.load(settings.reference_values)
    except PolicyConfigError as exc:
        raise PolicyConfigError(
            f"{exc} (--reference-values FILE; capture one from a golden device: trustctl refvalues capture)"
        ) from exc
    return ek_verifier, reference_policy


def build_hub(settings: TrustdSettings, *, worker: int | None = None) -> Hub:
    """The hub of one process; `worker` (1..N, trustd serve --workers) gives it a serving certificate of its own
    under `<data-dir>/tls/worker-N`, so workers starting together never write over each other's key."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    trust_domain = TrustDomain.parse(settings.trust_domain)
    ek_verifier, reference_policy = _attestation_config(settings)  # before the token and store open
    trust = material.load(settings)  # none found: refused, never a new root
    try:
        return _build(settings, trust_domain, trust, ek_verifier, reference_policy, worker)
    except BaseException:
        trust.close()
        raise


def _build(
    settings: TrustdSettings,
    trust_domain: TrustDomain,
    trust: material.TrustMaterial,
    ek_verifier: EKVerifier,
    reference_policy: ReferencePolicy,
    worker: int | None,
) -> Hub:
    ca = trust.ca
    tls_dir = settings.data_dir / "tls" / (f"worker-{worker}" if worker is not None else "")
    store = open_store(settings.effective_store_url)
    service = EnrollmentService(
        ek_verifier=ek_verifier,
        reference_policy=reference_policy,
        ca=ca,
        store=store,
        policy=EnrollmentPolicy(
            spiffe_id_template=settings.spiffe_id_template,
            svid_ttl=timedelta(seconds=settings.svid_ttl_s),
            jwt_svid_ttl=timedelta(seconds=settings.jwt_svid_ttl_s),
            challenge_ttl=timedelta(seconds=settings.challenge_ttl_s),
        ),
    )
    tls_cert, tls_key = _serving_certificate(settings, ca, trust_domain, tls_dir)
    revocations = Revocations(store, trust.revocation_key, trust_domain)
    federation = Federation(settings.federation_file, settings.data_dir / "federation")
    policy = None
    if settings.fleet_file is not None:
        keys_dir = settings.policy_keys_dir
        if keys_dir is None or not keys_dir.is_dir():
            raise TrustdError("fleet_file needs policy_keys_dir: the publishers' bundle-signing keys")
        keys = load_verification_keys({p.stem: p.read_bytes() for p in sorted(keys_dir.glob("*.pem"))})
        # what a hub before issue 17 kept in its data dir, into the store once (legacy.py)
        import_data_dir(
            store, settings.data_dir / "policy", lambda group, blob: verified_bundle(group, blob, keys).counter
        )
        policy = PolicyBundles(store, Fleet.load(settings.fleet_file), keys, revocations, ClusterStatus(store))
    operators = frozenset(settings.operators) | (policy.fleet.operators if policy else frozenset())
    reserved = ReservedNames(
        trust_domain,
        node_template=settings.spiffe_id_template,
        privileged=operators | (policy.fleet.publishers if policy else frozenset()),
    )
    try:
        reserved.check_template()  # a template that could name a node /operator/... or /trustd refuses to start
    except TrustdError:
        store.close()
        raise
    client_roots = tls_dir / "client-roots.pem"
    client_roots.write_bytes(ca.x509_authorities_pem())
    return Hub(
        settings=settings,
        ca=ca,
        store=store,
        service=service,
        app=create_app(
            service=service,
            ca=ca,
            store=store,
            revocations=revocations,
            operators=operators,
            reserved=reserved,
            policy=policy,
            jwt_svid_ttl=timedelta(seconds=settings.jwt_svid_ttl_s),
            federation=federation,
            ca_directory=settings.ca_dir if trust.token is None else None,
        ),
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_roots=client_roots,
        revocations=revocations,
        federation=federation,
        policy=policy,
        trust=trust,
    )


def _serving_certificate(
    settings: TrustdSettings, ca: SpiffeCA, trust_domain: TrustDomain, tls_dir: Path
) -> tuple[Path, Path]:
    for directory in (tls_dir.parent, tls_dir):  # <data-dir>/tls and a worker's own, both private
        directory.mkdir(exist_ok=True, mode=0o700)
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    key_pem, chain_pem = ca.issue_server_certificate(
        dns_names=list(settings.server_dns_names),
        ip_addresses=[ipaddress.ip_address(a) for a in settings.server_ip_addresses],
        spiffe_id=SpiffeId.parse(f"spiffe://{trust_domain}/trustd"),
        ttl=SERVER_CERT_TTL,
    )
    write_private(tls_dir / "server.key", key_pem)
    (tls_dir / "server.pem").write_bytes(chain_pem)
    return tls_dir / "server.pem", tls_dir / "server.key"


def server_config(hub: Hub) -> uvicorn.Config:
    """How `trustd serve` runs the app, in one place: the tests' hubs run exactly this (lifespan, watchers and
    the connection guard included), so what they prove holds for the real server."""
    settings = hub.settings
    return serving.server_config(
        saturation.Saturation(hub.app, request_limits(settings), is_long_poll=_is_long_poll),
        host=settings.listen_host,
        port=settings.listen_port,
        certfile=str(hub.tls_cert),
        keyfile=str(hub.tls_key),
        # clients may present an X.509-SVID (clusters, publishers); enrollment needs none
        client_cert_reqs=ssl.CERT_OPTIONAL,
        client_ca_certs=str(hub.client_roots),
        protocol=PeerCertificateProtocol,
        limits=serving_limits(settings),
        # the revocation, CA-rotation and federation watchers start with the app; a failed start is fatal
        lifespan="on",
    )


def request_limits(settings: TrustdSettings) -> saturation.RequestLimits:
    return saturation.RequestLimits(
        max_in_flight=settings.max_in_flight_requests, max_long_polls=settings.max_long_polls
    )


def _is_long_poll(scope: saturation.Scope) -> bool:
    """A cluster's bundle poll that waits for a change (`?wait=` above 0): held, not worked on."""
    return scope.get("path") == "/v1/policy/bundle" and saturation.query_wait(scope) > 0


def serving_limits(settings: TrustdSettings) -> serving.ServingLimits:
    return serving.ServingLimits(
        handshake_timeout_s=settings.tls_handshake_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        # clusters come back within a long poll's length plus their own work; uvicorn's 5 s default closed
        # connections of agents busy applying, and their TLS handshakes were a third of the hub's CPU at
        # 10,000 clusters (fleet_sim)
        keep_alive_s=KEEP_ALIVE_S,
        max_connections=settings.max_connections,
    )


def serve(settings: TrustdSettings) -> None:
    """`trustd serve`: this process serves, or with `workers` above 1 it supervises that many (workers.py)."""
    if settings.workers > 1:
        from trustd.server import workers

        workers.supervise(settings)
        return
    serving.check_free(settings.listen_host, settings.listen_port)  # before the CA and the store are touched
    hub = build_hub(settings)
    log.info(
        "trustd serving trust domain %s on https://%s:%d",
        settings.trust_domain,
        settings.listen_host,
        settings.listen_port,
    )
    run_hub(hub)


def run_hub(hub: Hub, sockets: Sequence[socket.socket] | None = None) -> None:
    """Serve `hub` until SIGINT/SIGTERM (on `sockets` when given: a worker's), then close it."""
    try:
        started = serving.run(
            server_config(hub),
            limits=serving_limits(hub.settings),
            periodic=[serving.Periodic(hub.service.upkeep_interval_s, hub.service.maintain)],
            sockets=sockets,
        )
    finally:
        hub.close()
    if not started:  # the port was taken, the lifespan failed: what uvicorn.run reports, exit code 3
        raise SystemExit(3)
