"""A real CNCF distribution registry (Debian's docker-registry) over TLS on loopback, and the real tools that
fill it: oras pushes test images, cosign signs them and attaches nothing we wrote ourselves.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.hub import free_port
from tests.support.peers import peer
from tests.support.processes import running
from tests.support.tlsca import TestCA

COSIGN_PASSWORD = "edgetrust-test"  # protects a throwaway key in a temporary directory


def registry_binary() -> str:
    path = shutil.which("docker-registry")
    if path is None:
        pytest.fail("docker-registry is not installed: run hack/install-deps (apt-get install docker-registry)")
    return path


@dataclass
class Registry:
    host: str
    ca: TestCA
    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    def tool_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SSL_CERT_FILE=str(self.ca_file),
            COSIGN_PASSWORD=COSIGN_PASSWORD,
            HOME=str(self.workdir / "home"),
            DOCKER_CONFIG=str(self.workdir / "home" / ".docker"),
        )
        return env

    def push_image(self, repository: str, tag: str, *, content: bytes = b"edgetrust test image\n") -> str:
        """Push a small but well-formed OCI image with oras; returns its manifest digest."""
        work = self.workdir / "images" / repository.replace("/", "_") / tag
        work.mkdir(parents=True, exist_ok=True)
        layer = work / "layer.tar.gz"
        layer.write_bytes(_layer(content))
        config = work / "config.json"
        config.write_text(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}))
        out = self.run(
            peer("oras"),
            "push",
            "--ca-file",
            str(self.ca_file),
            "--config",
            "config.json:application/vnd.oci.image.config.v1+json",
            "--format",
            "json",
            f"{self.host}/{repository}:{tag}",
            "layer.tar.gz:application/vnd.oci.image.layer.v1.tar+gzip",
            cwd=work,
        )
        return str(json.loads(out)["digest"])

    def cosign_keypair(self, name: str) -> tuple[Path, Path]:
        directory = self.workdir / "keys" / name
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "cosign.pub").exists():
            self.run(peer("cosign"), "generate-key-pair", cwd=directory)
        return directory / "cosign.key", directory / "cosign.pub"

    def cosign_sign(self, reference: str, key: Path) -> None:
        self.run(peer("cosign"), "sign", "--yes", "--key", str(key), "--tlog-upload=false", reference, cwd=self.workdir)

    def cosign_verify(self, reference: str, public_key: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(peer("cosign")), "verify", "--key", str(public_key), "--insecure-ignore-tlog=true", reference],
            capture_output=True,
            text=True,
            env=self.tool_env(),
            cwd=self.workdir,
            timeout=120,
        )

    def oras_attach(self, reference: str, artifact_type: str, path: Path, media_type: str) -> None:
        self.run(
            peer("oras"),
            "attach",
            "--ca-file",
            str(self.ca_file),
            "--artifact-type",
            artifact_type,
            reference,
            f"{path.name}:{media_type}",
            cwd=path.parent,
        )

    def http_get_json(self, path: str) -> dict[str, object]:
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
        answer = httpx.get(
            f"https://{self.host}/v2/{path}",
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            headers={"Accept": accept},
        )
        answer.raise_for_status()
        body: dict[str, object] = answer.json()
        return body

    def delete_blob(self, repository: str, digest: str) -> None:
        answer = httpx.delete(
            f"https://{self.host}/v2/{repository}/blobs/{digest}",
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
        )
        assert answer.status_code == 202, answer.text

    def run(self, binary: Path | str, *args: str, cwd: Path) -> str:
        result = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=self.tool_env(), cwd=cwd, timeout=180
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(binary).name} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout


@contextmanager
def running_registry(workdir: Path, ca: TestCA, *, port: int | None = None) -> Iterator[Registry]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    cert = ca.issue("registry")
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {
            "addr": f"127.0.0.1:{port}",
            "tls": {"certificate": str(cert.cert), "key": str(cert.key)},
            "debug": {"addr": ""},
        },
    }
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config))

    def answering() -> bool:
        return (
            httpx.get(
                f"https://127.0.0.1:{port}/v2/", verify=ssl.create_default_context(cafile=str(ca.ca_file)), timeout=1
            ).status_code
            == 200
        )

    with running([registry_binary(), "serve", str(config_path)], ready=answering, log=workdir / "registry.log"):
        yield Registry(host=f"127.0.0.1:{port}", ca=ca, workdir=workdir, port=port)


def _layer(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)
