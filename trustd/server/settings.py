"""trustd's configuration: one typed object, built once at the edge (CLI or test) and passed down.

Values come from arguments, then `TRUSTD_*` environment variables, then these defaults. The defaults run
an embedded hub (SQLite, CA files under the data directory) on loopback.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: a host name in a certificate: labels of letters, digits and hyphens (RFC 1123), no wildcard
_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


class TrustdSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRUSTD_", extra="forbid", frozen=True)

    trust_domain: str = Field(default="edge.example", description="SPIFFE trust domain, e.g. retail.example")
    data_dir: Path = Field(
        default=Path("/var/lib/edgetrust/trustd"), description="CA keys, the serving certificate and the embedded store"
    )
    store_url: str | None = Field(
        default=None,
        description="store URL: sqlite:///path (embedded; default <data-dir>/trustd.db) or postgresql://...",
    )
    pkcs11_module: Path | None = Field(
        default=None,
        description="a PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): the CA, JWT and revocation keys live "
        "on its token, shared by every replica, instead of in files under the data directory",
    )
    pkcs11_token: str = Field(default="edgetrust", description="the label of the PKCS#11 token holding the hub's keys")
    pkcs11_pin_file: Path | None = Field(
        default=None,
        description="a file holding the token's user PIN (a mounted Secret); never a flag or variable of its own",
    )
    ek_roots_dir: Path = Field(
        default=Path("/etc/edgetrust/ek-roots"),
        description="directory of TPM vendors' EK roots (and intermediates), one certificate per file",
    )
    reference_values: Path = Field(
        default=Path("/etc/edgetrust/reference-values.yaml"),
        description="the operator's reference values per device class (YAML or JSON)",
    )
    spiffe_id_template: str = Field(
        default="/site/{site}/node/{node}",
        description="path of a node's SPIFFE ID; fields come from the device's claims, plus {device_class} and {ek}",
    )
    svid_ttl_s: int = Field(default=4 * 3600, ge=60, le=7 * 24 * 3600, description="lifetime of a node's X.509-SVID")
    jwt_svid_ttl_s: int = Field(default=300, ge=30, le=24 * 3600, description="lifetime of a JWT-SVID")
    challenge_ttl_s: int = Field(
        default=60,
        ge=5,
        le=600,
        description="how long an enrollment challenge may be answered: a device answers within seconds; a long "
        "window only helps an attacker holding a stolen challenge",
    )
    listen_host: str = Field(default="127.0.0.1", description="address to listen on")
    listen_port: int = Field(default=8443, ge=0, le=65535, description="port to listen on")
    tls_cert: Path | None = Field(
        default=None,
        description="the hub's serving certificate chain (PEM); issued by its own CA at start when not given",
    )
    tls_key: Path | None = Field(default=None, description="the key of --tls-cert")
    server_dns_names: tuple[str, ...] = Field(
        default=("localhost",),
        description="DNS name the hub is reached by, in its own serving certificate (re-issued at every start)",
    )
    server_ip_addresses: tuple[str, ...] = Field(
        default=("127.0.0.1",), description="IP address the hub is reached by, in its own serving certificate"
    )
    fleet_file: Path | None = Field(
        default=None,
        description="policy distribution: cluster groups, clusters and publishers (YAML); off when not set",
    )
    policy_keys_dir: Path | None = Field(
        default=None,
        description="publishers' bundle-signing public keys, one PEM per file, the key id being the file name "
        "without .pem",
    )
    federation_file: Path | None = Field(
        default=None,
        description="other trust domains to federate with (YAML: federates_with: [{trust_domain, "
        "bundle_endpoint_url, endpoint_spiffe_id, bootstrap_bundle}]); their bundles go to our workloads",
    )
    tls_handshake_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="slow clients (slowloris): a TLS handshake must be done within this"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="slow clients (slowloris): a request head must arrive within this"
    )
    max_connections: int = Field(
        default=32768,
        ge=16,
        description="open connections at most (a long-polling cluster holds one); capped below the fd limit at start",
    )
    max_in_flight_requests: int = Field(
        default=512,
        ge=1,
        description="requests worked on at once (long polls apart); one more is answered 503 with Retry-After",
    )
    max_long_polls: int = Field(
        default=32768,
        ge=1,
        description="long polls held at once; one more is answered 503 with Retry-After (the cluster retries)",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes serving the one listen port, each with its own store pool, token login and limits "
        "(connections, requests, long polls are per worker); more than 1 needs a PostgreSQL store, whose "
        "notifications wake long polls across workers as across replicas. Give the cores the hub may use",
    )
    operators: tuple[str, ...] = Field(
        default=(),
        description="SPIFFE ID of an operator (trustctl fleet: list, revoke, entries), beside those the fleet file "
        "names. The first operator: mint its SVID with `trustd svid mint --spiffe-id "
        "spiffe://<trust domain>/operator/<name>`, then give it here or under `operators:` in the fleet file",
    )

    @field_validator("spiffe_id_template")
    @classmethod
    def _template_is_a_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("spiffe_id_template must be a path starting with '/', e.g. /site/{site}/node/{node}")
        return value

    @field_validator("workers")
    @classmethod
    def _workers_share_a_store(cls, value: int, info: ValidationInfo) -> int:
        """SQLite's store tells no other process of a write (no LISTEN/NOTIFY, `Store.shared` is False): a long
        poll held by one worker would not wake for a publish through another, and each would keep its own copy
        of the rollouts. Refused rather than served wrong."""
        url = info.data.get("store_url") or ""
        if value > 1 and not str(url).startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "more than one worker needs a PostgreSQL store (--store postgresql://...): with SQLite, workers "
                "would not see each other's writes in time (long polls, rollouts)"
            )
        return value

    @field_validator("server_dns_names")
    @classmethod
    def _dns_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _DNS_NAME.fullmatch(name) or len(name) > 253:
                raise ValueError(f"{name!r} is not a DNS name (e.g. hub.retail.example)")
        return value

    @field_validator("server_ip_addresses")
    @classmethod
    def _ip_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address (e.g. 10.0.0.5)") from None
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
