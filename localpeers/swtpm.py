"""A real software TPM (swtpm + libtpms) on loopback, provisioned like a factory would.

Used by `make demo`, the integration tests and the benchmarks, so that every attestation path runs on
real TPM evidence. `swtpm_setup` creates the endorsement keys and has a private local CA (one per
`SoftwareTPMFactory`) sign EK certificates, which stands in for a TPM vendor's manufacturing CA.

This module only drives Debian's swtpm tools; it never touches the TPM's contents itself.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from attestation.errors import TPMDeviceError

INSTALL_HINT = "apt-get install -y swtpm swtpm-tools libtss2-tcti-swtpm0 (or run hack/install-deps)"

#: swtpm takes well under a second to listen; a slow CI machine gets ten
_START_TIMEOUT_S = 10.0


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TPMDeviceError(f"{tool} is not installed; install it with: {INSTALL_HINT}")
    return path


def _free_port_pair(host: str) -> tuple[int, int]:
    """A free port on `host` whose successor is free too: the swtpm TCTI expects the control port at port+1.
    Probed on `host` itself: a port free on loopback may be taken on another local address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 1))
        except OSError:
            continue
        return port, port + 1
    raise TPMDeviceError(f"no two adjacent free ports on {host} for swtpm")


@dataclass
class SoftwareTPMFactory:
    """A local manufacturing CA plus the swtpm_setup configuration that uses it.

    The CA root is what trustd must be configured to trust (`root_cert_path`), exactly as an operator
    configures Infineon's or STMicro's roots for real TPMs.
    """

    workdir: Path
    pcr_banks: str = "sha256,sha1"

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_dir = self.workdir / "localca"
        self.ca_dir.mkdir(exist_ok=True, mode=0o700)
        localca_conf = self.ca_dir / "swtpm-localca.conf"
        localca_conf.write_text(
            f"statedir = {self.ca_dir}\n"
            f"signingkey = {self.ca_dir}/signkey.pem\n"
            f"issuercert = {self.ca_dir}/issuercert.pem\n"
            f"certserial = {self.ca_dir}/certserial\n"
        )
        options = self.ca_dir / "swtpm-localca.options"
        options.write_text("--platform-manufacturer edgetrust\n--platform-version 2.1\n--platform-model swtpm-test\n")
        self.setup_conf = self.ca_dir / "swtpm_setup.conf"
        self.setup_conf.write_text(
            f"create_certs_tool = {_require('swtpm_localca')}\n"
            f"create_certs_tool_config = {localca_conf}\n"
            f"create_certs_tool_options = {options}\n"
            f"active_pcr_banks = {self.pcr_banks}\n"
        )
        self._count = 0

    @property
    def root_cert_path(self) -> Path:
        """The self-signed root of this factory; exists once the first TPM has been provisioned."""
        return self.ca_dir / "swtpm-localca-rootca-cert.pem"

    @property
    def issuer_cert_path(self) -> Path:
        return self.ca_dir / "issuercert.pem"

    def provision(self, name: str | None = None, *, ek_cert: bool = True) -> Path:
        """Create the state directory of a new TPM with RSA and ECC EKs (and their certificates)."""
        self._count += 1
        state = self.workdir / (name or f"tpm{self._count}")
        if state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True)
        args = [
            _require("swtpm_setup"),
            "--tpm2",
            "--tpmstate",
            str(state),
            "--config",
            str(self.setup_conf),
            "--createek",
            "--overwrite",
            "--pcr-banks",
            self.pcr_banks,
        ]
        if ek_cert:
            args += ["--create-ek-cert", "--lock-nvram"]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TPMDeviceError(f"swtpm_setup failed for {state}: {done.stderr.strip() or done.stdout.strip()}")
        return state

    def start(self, name: str | None = None, *, ek_cert: bool = True, host: str = "127.0.0.1") -> SoftwareTPM:
        """`host`: a local address to listen on (loopback by default; the real cluster's node address for pods)."""
        tpm = SoftwareTPM(self.provision(name, ek_cert=ek_cert), host=host)
        tpm.start()
        return tpm


@dataclass
class SoftwareTPM:
    """One running swtpm, reachable through the `swtpm:` TCTI on `host`, 127.0.0.1 unless told (unix sockets fail
    in tss 3.2). Never a wildcard or an outward address: the TPM's commands carry no authentication."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    ctrl_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    def start(self) -> None:
        swtpm = _require("swtpm")
        last_error = ""
        for _attempt in range(5):  # a port picked as free can be taken by the time swtpm binds it
            self.port, self.ctrl_port = _free_port_pair(self.host)
            self._proc = subprocess.Popen(
                [
                    swtpm,
                    "socket",
                    "--tpm2",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr={self.host}",
                    "--ctrl",
                    f"type=tcp,port={self.ctrl_port},bindaddr={self.host}",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    last_error = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                    break
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.02)
            else:
                last_error = f"swtpm did not listen on {self.host}:{self.port} within {_START_TIMEOUT_S}s"
            self.stop()
        raise TPMDeviceError(f"could not start swtpm for {self.state_dir}: {last_error}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> SoftwareTPM:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
