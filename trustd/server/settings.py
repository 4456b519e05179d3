"""trustd's configuration: one typed object, built once at the edge (CLI or test) and passed down.

Values come from arguments, then `TRUSTD_*` environment variables, then these defaults. The defaults run
an embedded hub (SQLite, CA files under the data directory) on loopback.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrustdSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRUSTD_", extra="forbid", frozen=True)

    trust_domain: str = "edge.example"
    data_dir: Path = Path("/var/lib/edgetrust/trustd")
    #: sqlite:///path (embedded); defaults to <data_dir>/trustd.db
    store_url: str | None = None
    #: TPM vendors' EK roots (and intermediates), one certificate per file
    ek_roots_dir: Path = Path("/etc/edgetrust/ek-roots")
    #: the operator's reference values per device class (YAML or JSON)
    reference_values: Path = Path("/etc/edgetrust/reference-values.yaml")
    #: path of the node's SPIFFE ID; fields come from the device's claims, plus {device_class} and {ek}
    spiffe_id_template: str = "/site/{site}/node/{node}"
    svid_ttl_s: int = Field(default=4 * 3600, ge=60, le=7 * 24 * 3600)
    jwt_svid_ttl_s: int = Field(default=300, ge=30, le=24 * 3600)
    #: a device answers within seconds; a long window only helps an attacker holding a stolen challenge
    challenge_ttl_s: int = Field(default=60, ge=5, le=600)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8443, ge=0, le=65535)
    #: trustd's serving certificate; issued by its own CA at start when not given
    tls_cert: Path | None = None
    tls_key: Path | None = None
    server_dns_names: tuple[str, ...] = ("localhost",)
    #: policy distribution: cluster groups, clusters and publishers (YAML); off when not set
    fleet_file: Path | None = None
    #: publishers' bundle-signing public keys, one PEM per file, the key id being the file name without .pem
    policy_keys_dir: Path | None = None
    server_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    #: other trust domains to federate with (YAML: federates_with: [{trust_domain, bundle_endpoint_url,
    #: endpoint_spiffe_id, bootstrap_bundle}]); their bundles go to our workloads
    federation_file: Path | None = None
    #: slow clients (slowloris): a TLS handshake and a request head must each be done within these seconds
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0, le=120)
    header_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: open connections at most (a long-polling cluster holds one); capped below the fd limit at start
    max_connections: int = Field(default=16384, ge=16)
    #: SPIFFE IDs of operators (trustctl fleet list/revoke), beside those the fleet file names
    operators: tuple[str, ...] = ()

    @field_validator("spiffe_id_template")
    @classmethod
    def _template_is_a_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("spiffe_id_template must be a path starting with '/', e.g. /site/{site}/node/{node}")
        return value

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'trustd.db'}"

    @property
    def revocations_dir(self) -> Path:
        return self.data_dir / "revocations"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"
