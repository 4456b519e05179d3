"""The webhook's configuration: one typed object, from arguments, `ADMISSION_*` variables, then defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from admission.errors import ImageReferenceError
from admission.imageref import canonical_registry


class AdmissionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADMISSION_", extra="forbid", frozen=True)

    policy_dir: Path = Path("/etc/edgetrust/policies/admission")
    #: enforce the policy library shipped in the package (admission/library.py) instead of policy_dir; what the
    #: chart runs when the user gives no bundle. Not with `bundle`: one policy source.
    default_library: bool = False
    #: the site's parameters file ({policy: {parameter: value}}, e.g. allowed_repos: {repos: [...]}), merged
    #: into the policies' parameters and checked against them (edgetrust/bundles/policyfile.py)
    parameters: Path | None = None
    #: take policies (and Gatekeeper files) from a signed policy bundle instead, e.g. the one the syncer keeps;
    #: verified at start with bundle_keys ("key id=PEM file"), or the webhook does not start
    bundle: Path | None = None
    bundle_keys: tuple[str, ...] = ()
    #: follow the bundles the syncer accepts (the handoff ConfigMap, edgetrust/bundles/handoff.py) through the
    #: API server (kube_url or the service account), each verified here with bundle_keys and bundle_group and
    #: swapped in without a restart when its counter is newer; the start-up set (bundle, default_library,
    #: policy_dir) is enforced until the ConfigMap gives a verified one, and the last verified set through a
    #: partition
    follow_bundles: bool = False
    follow_namespace: str = "edgetrust-system"
    follow_interval_s: float = Field(default=5.0, gt=0)
    #: the cluster group the followed bundles must be signed for (another group's bundle is refused)
    bundle_group: str | None = None
    #: report what this replica enforces to the hub (admission/report.py), as the cluster: trustd's https:// URL;
    #: unset, nothing is reported. The identity is the Workload API's SVID (spiffe_socket, or
    #: SPIFFE_ENDPOINT_SOCKET), or the fallback files svid and svid_key (nothing renews them)
    hub: str | None = None
    #: the roots that verify the hub's serving certificate (trustd bundle --pem)
    ca_bundle: Path | None = None
    spiffe_socket: str | None = None
    svid: Path | None = None
    svid_key: Path | None = None
    #: the name this replica reports under; unset: $POD_NAME (the chart's downward API), else the host name
    pod_name: str | None = None
    report_heartbeat_s: float = Field(default=30.0, gt=0, le=300)
    #: attestation-aware binding (admission/nodegate.py): refuse CREATE of pods/binding, and of pods naming
    #: spec.nodeName, to a node the hub's signed node attestation document (ConfigMap
    #: edgetrust-node-attestation in follow_namespace, relayed by the syncer) does not show attested, fresh and
    #: unrevoked; verified with node_attestation_key (the hub's revocation key) for cluster `cluster`
    node_attestation: bool = False
    node_attestation_key: Path | None = None
    node_attestation_interval_s: float = Field(default=5.0, gt=0)
    cluster: str | None = None
    #: start with no policy at all (an empty or mistyped policy_dir otherwise stops the start): the webhook then
    #: admits everything, warns at start and puts a warning on every review it admits. For bring-up only.
    unsafe_allow_empty_policy_set: bool = False
    #: Gatekeeper ConstraintTemplates and Constraints (YAML, any layout; `samples/` folders are skipped)
    gatekeeper_dir: Path | None = None
    #: judge Pod constraints on the Pod a Deployment/Job/... would create (Gatekeeper's expansion)
    expand_workloads: bool = True
    #: API paths listed into data.inventory, e.g. api/v1/namespaces (Gatekeeper's sync.syncOnly)
    inventory_resources: tuple[str, ...] = ()
    inventory_interval_s: float = Field(default=30.0, gt=0)
    #: the API server to list from; in a pod, the service account is used when this is not set
    kube_url: str | None = None
    kube_token_file: Path | None = None
    kube_ca_file: Path | None = None
    #: namespaces never checked, so that a broken policy, OPA or registry cannot lock the cluster out;
    #: the webhook's own namespace is added by the chart
    exempt_namespaces: tuple[str, ...] = ("kube-system",)
    opa_host: str = "127.0.0.1"
    opa_port: int = Field(default=8181, ge=1, le=65535)
    opa_timeout_s: float = Field(default=2.0, gt=0, le=8)
    registry_ca_file: Path | None = None
    #: registry credentials, a Docker config.json style file (`{"auths": {"host": {"auth": ...}}}`); Basic or
    #: the token flow, whichever the registry asks for; without it registries are read anonymously
    registry_auth_file: Path | None = None
    #: registries spoken to without TLS; for loopback test registries only
    plain_http_registries: tuple[str, ...] = ()
    registry_timeout_s: float = Field(default=3.0, gt=0, le=8)
    verdict_ttl_s: float = Field(default=3600.0, gt=0)
    tag_ttl_s: float = Field(default=60.0, gt=0)
    cache_entries: int = Field(default=10_000, ge=1)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8443, ge=0, le=65535)
    tls_cert: Path = Path("/etc/edgetrust/admission/tls.crt")
    tls_key: Path = Path("/etc/edgetrust/admission/tls.key")
    #: slow clients (slowloris): a TLS handshake and a request head must each be done within these seconds
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0, le=120)
    header_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: open connections at most; capped below the fd limit at start
    max_connections: int = Field(default=4096, ge=16)

    @field_validator("plain_http_registries")
    @classmethod
    def _canonical_registries(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        """In the canonical spelling references are compared in (`LOCALHOST:5000` is `localhost:5000`)."""
        try:
            return tuple(canonical_registry(host) for host in hosts)
        except ImageReferenceError as exc:
            raise ValueError(str(exc)) from None
