"""Assemble a webhook from its settings; the one place that turns configuration into objects."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from admission.app import ReviewEndpoints, create_app
from admission.controller import AdmissionController
from admission.errors import ConfigError
from admission.follow import BundleFollower
from admission.images.verifier import CacheSettings, ImageVerifier
from admission.library import default_library
from admission.metrics import AdmissionMetrics
from admission.nodegate import NodeGate
from admission.policy import PolicySet
from admission.registry import RegistryClient, RegistrySettings
from admission.rego.inventory import Inventory, InventorySync, KubeSource
from admission.rego.opa import OpaDecider, OpaSettings
from admission.report import StatusReporter
from admission.settings import AdmissionSettings
from edgetrust._internal import hubclient, serving
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.format import unpack
from edgetrust.bundles.revocations import KEY_ID
from edgetrust.bundles.signing import load_verification_keys, verify_bundle
from edgetrust.oci.auth import load_credentials
from edgetrust.oci.errors import OCIError

log = logging.getLogger("edgetrust.admission")


def build_controller(settings: AdmissionSettings) -> AdmissionController:
    policy_dir, gatekeeper_dir = settings.policy_dir, settings.gatekeeper_dir
    counter = -1
    if settings.default_library and settings.bundle is not None:
        raise ConfigError("--default-library and --bundle both given: give one policy source")
    if settings.default_library:
        policy_dir = default_library(settings.parameters).directory
    elif settings.bundle is not None:
        policy_dir, gatekeeper_dir, counter = policies_from_bundle(settings.bundle, settings.bundle_keys)
    policies = PolicySet.load(
        policy_dir,
        exempt_namespaces=settings.exempt_namespaces,
        gatekeeper_dir=gatekeeper_dir,
        allow_empty=settings.unsafe_allow_empty_policy_set,
        parameters=settings.parameters,
    )
    metrics = AdmissionMetrics()
    registry = RegistryClient(registry_settings(settings))
    images = ImageVerifier(
        registry,
        metrics,
        CacheSettings(
            verdict_ttl_s=settings.verdict_ttl_s, tag_ttl_s=settings.tag_ttl_s, max_entries=settings.cache_entries
        ),
    )
    opa = OpaDecider(OpaSettings(host=settings.opa_host, port=settings.opa_port, timeout_s=settings.opa_timeout_s))
    inventory = Inventory()
    sync = None
    source: kubeapi.Source = (
        KubeSource(settings.kube_url, token_file=settings.kube_token_file, ca_file=settings.kube_ca_file)
        if settings.kube_url and settings.kube_token_file
        else kubeapi.InCluster()
    )
    if settings.inventory_resources:
        sync = InventorySync(
            source, settings.inventory_resources, inventory, opa, interval_s=settings.inventory_interval_s
        )
    return AdmissionController(
        policies,
        opa,
        images,
        metrics,
        inventory=inventory,
        inventory_sync=sync,
        expand_workloads=settings.expand_workloads,
        counter=counter,
    )


def build_follower(settings: AdmissionSettings, controller: AdmissionController) -> BundleFollower | None:
    """The handoff ConfigMap's follower when `follow_bundles` (its keys and group checked here, at start)."""
    if not settings.follow_bundles:
        return None
    source: kubeapi.Source = (
        KubeSource(settings.kube_url, token_file=settings.kube_token_file, ca_file=settings.kube_ca_file)
        if settings.kube_url and settings.kube_token_file
        else kubeapi.InCluster()
    )
    return BundleFollower(
        controller,
        kubeapi.KubeConnection(source, user_agent="edgetrust-admission"),
        namespace=settings.follow_namespace,
        keys=bundle_keys(settings.bundle_keys),
        group=settings.bundle_group or "",
        interval_s=settings.follow_interval_s,
        exempt_namespaces=settings.exempt_namespaces,
        parameters=settings.parameters,
    )


def build_node_gate(settings: AdmissionSettings) -> NodeGate | None:
    """The node attestation follower when `node_attestation` (its key and cluster checked here, at start)."""
    if not settings.node_attestation:
        return None
    if settings.node_attestation_key is None:
        raise ConfigError("--node-attestation needs --revocation-key (the hub's revocation-signing public key)")
    try:
        keys = load_verification_keys({KEY_ID: settings.node_attestation_key.read_bytes()})
    except (OSError, BundleError) as exc:
        raise ConfigError(f"--revocation-key {settings.node_attestation_key}: {exc}") from exc
    return NodeGate(
        kubeapi.KubeConnection(_kube_source(settings), user_agent="edgetrust-admission"),
        namespace=settings.follow_namespace,
        keys=keys,
        cluster=settings.cluster or "",
        interval_s=settings.node_attestation_interval_s,
    )


def _kube_source(settings: AdmissionSettings) -> kubeapi.Source:
    return (
        KubeSource(settings.kube_url, token_file=settings.kube_token_file, ca_file=settings.kube_ca_file)
        if settings.kube_url and settings.kube_token_file
        else kubeapi.InCluster()
    )


def registry_settings(settings: AdmissionSettings) -> RegistrySettings:
    """How the webhook reaches registries; a credentials file that does not parse stops the start."""
    try:
        credentials = load_credentials(settings.registry_auth_file) if settings.registry_auth_file else {}
    except OCIError as exc:
        raise ConfigError(str(exc)) from exc
    return RegistrySettings(
        ca_file=str(settings.registry_ca_file) if settings.registry_ca_file else None,
        plain_http=frozenset(settings.plain_http_registries),
        timeout_s=settings.registry_timeout_s,
        credentials=credentials,
    )


def bundle_keys(key_specs: tuple[str, ...]) -> dict[str, ec.EllipticCurvePublicKey]:
    """The bundle signers' keys from "key id=PEM file" specs; none, or one that does not load, stops the start."""
    keys: dict[str, bytes] = {}
    for spec in key_specs:
        key_id, _, pem_path = spec.partition("=")
        if not key_id or not pem_path:
            raise ConfigError(f"bundle key {spec!r} must be 'key id=PEM file'")
        try:
            keys[key_id] = Path(pem_path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"bundle key {spec!r}: {exc}") from exc
    if not keys:
        raise ConfigError("a policy bundle needs at least one verification key (bundle_keys)")
    try:
        return load_verification_keys(keys)
    except BundleError as exc:
        raise ConfigError(f"bundle keys: {exc}") from exc


def policies_from_bundle(path: Path, key_specs: tuple[str, ...]) -> tuple[Path, Path, int]:
    """Verify a signed policy bundle and unpack its admission and Gatekeeper folders for PolicySet.load; with
    its revision counter, below which a followed bundle is refused."""
    keys = bundle_keys(key_specs)
    try:
        bundle = unpack(path.read_bytes())
        signer = verify_bundle(bundle, keys)
    except (BundleError, OSError) as exc:
        raise ConfigError(f"policy bundle {path} refused: {exc}") from exc
    work = Path(tempfile.mkdtemp(prefix="edgetrust-admission-"))
    log.info("admission policies from bundle %s (signed by %s)", bundle.revision, signer)
    admission_dir = bundle.extract("admission", work / "admission")
    return admission_dir, bundle.extract("gatekeeper", work / "gatekeeper"), bundle.counter


def build_reporter(settings: AdmissionSettings, controller: AdmissionController) -> StatusReporter | None:
    """The hub status reporter when `hub` is set: its SVID from the Workload API (waited for here, before
    serving: at most its start timeout), or the fallback files. Without a hub, none: a plain install is unchanged."""
    if settings.hub is None:
        return None
    if settings.ca_bundle is None:
        raise ConfigError("--hub needs --ca-bundle: the roots that verify the hub's serving certificate")
    if (settings.svid is None) != (settings.svid_key is None):
        raise ConfigError("--svid and --svid-key go together (the fallback); without both the Workload API is used")
    if settings.svid is not None and settings.spiffe_socket:
        raise ConfigError("--spiffe-socket or the --svid fallback, not both: which identity would the webhook use?")
    pod = settings.pod_name or os.environ.get("POD_NAME") or socket.gethostname()
    try:
        if settings.svid is not None:
            context = hubclient.tls_context(settings.ca_bundle, settings.svid, settings.svid_key)
            return StatusReporter(
                lambda: controller.status,
                hub_url=settings.hub,
                context=context,
                pod=pod,
                heartbeat_s=settings.report_heartbeat_s,
            )
    except hubclient.HubCallError as exc:
        raise ConfigError(str(exc)) from exc
    from edgetrust.spiffe.workload import WorkloadSvid, WorkloadSvidError, socket_address

    try:
        workload = WorkloadSvid(socket_address(settings.spiffe_socket), settings.ca_bundle)
    except WorkloadSvidError as exc:
        raise ConfigError(exc.diagnostics()) from exc
    try:
        return StatusReporter(
            lambda: controller.status,
            hub_url=settings.hub,
            context=workload.context,
            pod=pod,
            workload=workload,
            heartbeat_s=settings.report_heartbeat_s,
        )
    except hubclient.HubCallError as exc:
        workload.close()
        raise ConfigError(str(exc)) from exc


def build_app(settings: AdmissionSettings) -> ReviewEndpoints:
    controller = build_controller(settings)
    controller.node_gate = gate = build_node_gate(settings)
    follower = build_follower(settings, controller)
    return create_app(controller, follower=follower, reporter=build_reporter(settings, controller), node_gate=gate)


def serve(settings: AdmissionSettings, *, before_serving: Callable[[], None] | None = None) -> None:
    """Build the webhook (policies loaded and checked), call `before_serving` (the CLI waits for OPA there, so
    that a bad policy is said before an absent OPA), then serve until stopped."""
    app = build_app(settings)
    if before_serving is not None:
        before_serving()
    log.info("admission webhook on https://%s:%d", settings.listen_host, settings.listen_port)
    limits = serving.ServingLimits(
        handshake_timeout_s=settings.tls_handshake_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
    )
    config = serving.server_config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        certfile=str(settings.tls_cert),
        keyfile=str(settings.tls_key),
        limits=limits,
    )
    try:
        serving.run(config, limits=limits)
    except SystemExit:  # uvicorn's exit when the lifespan failed: say why, as our own error
        if app.startup_failure is not None:
            raise app.startup_failure from None
        raise
