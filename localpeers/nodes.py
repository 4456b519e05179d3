"""An enrolled node and its registration entries, the way an operator makes them: `enroll` with a (software)
TPM and its boot log, then `trustctl fleet entry create` with an operator's SVID. Shared by the node-agent
tests and the benchmarks that compare it with SPIRE."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from attestation.device import TPMDevice
from localpeers.hub import GOLDEN_BANKS
from localpeers.simboot import boot_events, measure_boot
from localpeers.svid import issue_svid_files
from localpeers.swtpm import SoftwareTPM, SoftwareTPMFactory
from trustd.agent.enroll_client import Enrollment, enroll
from trustd.cli.trustctl import main as trustctl
from trustd.server.ca import SpiffeCA

OPERATOR = "spiffe://edge.example/operator/admin"


def enroll_node(
    hub_url: str, ca_bundle: Path, *, tcti: str, event_log: bytes, out_dir: Path, node: str = "gw-01", site: str = "lab"
) -> Enrollment:
    return enroll(
        server=hub_url,
        tcti=tcti,
        out_dir=out_dir,
        device_class="edge-gateway",
        claims={"site": site, "node": node},
        ca_bundle=ca_bundle,
        event_log=event_log,
    )


def operator_args(hub_url: str, ca_bundle: Path, ca: SpiffeCA, directory: Path) -> list[str]:
    """The hub options for trustctl, with an operator's SVID issued by the hub's CA (operator: OPERATOR)."""
    cert, key = issue_svid_files(ca, OPERATOR, directory)
    return ["--hub", hub_url, "--ca-bundle", str(ca_bundle), "--svid", str(cert), "--svid-key", str(key)]


def create_entry(hub_args: Sequence[str], spiffe_id: str, parent: str, *selectors: str, ttl_s: int = 3600) -> None:
    argv = ["fleet", "entry", "create", "--spiffe-id", spiffe_id, "--parent", parent, "--ttl", str(ttl_s)]
    for selector in selectors:
        argv += ["--selector", selector]
    if trustctl([*argv, *hub_args]) != 0:
        raise RuntimeError(f"trustctl fleet entry create {spiffe_id} was refused")


def boot_swtpm(factory: SoftwareTPMFactory, name: str) -> tuple[SoftwareTPM, bytes]:
    """A started swtpm that has measured the golden boot, and its TCG event log (the caller stops it)."""
    tpm = factory.start(name)
    with TPMDevice(tpm.tcti) as device:
        return tpm, measure_boot(device, boot_events(), GOLDEN_BANKS)


def ek_roots_of(factory: SoftwareTPMFactory, directory: Path) -> Path:
    """The manufacturer's EK root and intermediate, as trustd's --ek-roots directory."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(factory.root_cert_path, directory / "root.pem")
    shutil.copy(factory.issuer_cert_path, directory / "intermediate.pem")
    return directory
