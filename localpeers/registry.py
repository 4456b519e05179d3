"""A real CNCF distribution registry (Debian's docker-registry) over TLS on loopback, and the real tools that
fill it: oras pushes test images, cosign (v2 `cosign`, v3 `cosign3`) signs them and verifies them as the oracle.

Debian's registry has no referrers API, so cosign v3 and oras attach bundles under the referrers-tag fallback
index. With `auth="htpasswd"` it requires a password (HTTP Basic, a bcrypt htpasswd file made by Apache's
`htpasswd`); with `auth="token"` it requires a token from the token service of tests/support/registry_token.py
(the distribution token flow), which requires the password. The tools log in through the Docker config.json
`auth_file` (also what edgetrust's `--registry-auth-file` takes); the raw helpers below speak Basic only.

An attacker with write access to the registry is modelled by the raw `put_*` helpers and
`attach_with_referrers_tag`, which write what cosign v3 writes, but with whatever content the test chooses.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml

from localpeers.hub import free_port
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.tlsca import TestCA
from tests.support.registry_token import Login, TokenService, running_token_service

COSIGN_PASSWORD = "edgetrust-test"  # protects a throwaway key in a temporary directory
REGISTRY_LOGIN = Login("edge-ci", "correct horse battery staple")  # a protected registry's one user
BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# cosign v3 signs offline only with the signing config switched off (its default config names Rekor).
COSIGN3_OFFLINE = ("--use-signing-config=false", "--tlog-upload=false")


def registry_binary() -> str:
    path = shutil.which("docker-registry")
    if path is None:
        pytest.fail("docker-registry is not installed: run hack/install-deps (apt-get install docker-registry)")
    return path


def write_auth_file(path: Path, host: str, login: Login) -> Path:
    """A Docker config.json holding `login` for `host`, as `docker login` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def _htpasswd(path: Path, login: Login) -> Path:
    """distribution reads bcrypt htpasswd entries only; Apache's htpasswd makes them."""
    binary = shutil.which("htpasswd")
    if binary is None:
        pytest.fail("htpasswd is not installed: apt-get install apache2-utils")
    entry = subprocess.run(
        [binary, "-nbB", login.username, login.password], capture_output=True, text=True, check=True, timeout=60
    )
    path.write_text(entry.stdout.strip() + "\n")
    return path


@dataclass
class Registry:
    host: str
    ca: TestCA
    workdir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    #: for a registry that requires a password: its user, the Docker config.json that holds it (the tools use
    #: it), and for `auth="token"` the token service
    login: Login | None = None
    auth_file: Path | None = None
    token_service: TokenService | None = None

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

    def cosign3_sign(
        self,
        reference: str,
        key: Path,
        *,
        new_bundle_format: bool = True,
        upload: bool = True,
        bundle: Path | None = None,
    ) -> None:
        """cosign v3 `sign --key`, no Rekor: by default a Sigstore bundle attached as an OCI referrer; with
        `new_bundle_format=False` the legacy `.sig` layout; with `upload=False` only the `bundle` file is written."""
        args = ["sign", "--yes", "--key", str(key), *COSIGN3_OFFLINE]
        args.append(f"--new-bundle-format={'true' if new_bundle_format else 'false'}")
        args.append(f"--upload={'true' if upload else 'false'}")
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        self.run(peer("cosign3"), *args, reference, cwd=self.workdir)

    def cosign_verify(
        self, reference: str, public_key: Path, *, peer_name: str = "cosign", extra: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`cosign verify --key` offline (no Rekor here) with cosign v2 (`cosign`) or v3 (`cosign3`)."""
        args = ["verify", "--key", str(public_key), "--insecure-ignore-tlog=true", *extra, reference]
        return self._tool(peer(peer_name), args)

    def cosign_verify_keyless(
        self,
        reference: str,
        trusted_root: Path,
        identity: str,
        issuer: str,
        *,
        peer_name: str = "cosign3",
        legacy_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`cosign verify` of a keyless signature against a private trust root, offline. cosign v3 takes the
        trusted root for both layouts; cosign v2 takes it for bundles only (with --new-bundle-format), and for the
        legacy `.sig` layout reads the same trust from SIGSTORE_* files in `legacy_env`."""
        args = ["verify", "--certificate-identity", identity, "--certificate-oidc-issuer", issuer]
        env = self.tool_env()
        if peer_name == "cosign" and legacy_env is not None:
            env.update(legacy_env)
        elif peer_name == "cosign":
            args += ["--new-bundle-format", "--trusted-root", str(trusted_root)]
        else:
            args += ["--trusted-root", str(trusted_root)]
        return subprocess.run(
            [str(peer(peer_name)), *args, reference],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.workdir,
            timeout=120,
        )

    def _tool(self, binary: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=self.tool_env(), cwd=self.workdir, timeout=120
        )

    def _http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://{self.host}/v2",
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=30,
            auth=(self.login.username, self.login.password) if self.login and not self.token_service else None,
        )

    def blob(self, repository: str, digest: str) -> bytes:
        with self._http() as client:
            answer = client.get(f"/{repository}/blobs/{digest}")
        answer.raise_for_status()
        return answer.content

    def put_blob(self, repository: str, data: bytes) -> str:
        """A monolithic blob upload (distribution spec); returns its sha256 digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._http() as client:
            started = client.post(f"/{repository}/blobs/uploads/")
            assert started.status_code == 202, started.text
            location = started.headers["location"]  # carries the upload's state in its query: append to it
            location += ("&" if "?" in location else "?") + f"digest={digest}"
            done = client.put(location, content=data, headers={"Content-Type": "application/octet-stream"})
            assert done.status_code == 201, done.text
        return digest

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> httpx.Response:
        with self._http() as client:
            return client.put(
                f"/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
            )

    def get_manifest(self, repository: str, reference: str) -> bytes | None:
        with self._http() as client:
            answer = client.get(
                f"/{repository}/manifests/{reference}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
            )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.content

    def attach_with_referrers_tag(self, repository: str, subject: str, bundle: bytes) -> str:
        """Attach `bundle` to image digest `subject` exactly as cosign v3 does on a registry without the
        referrers API: an artifact manifest with a `subject`, listed in the `<alg>-<hex[:64]>` fallback index.
        Works for sha512 subjects too (oras and cosign cannot resolve those here). Returns the artifact digest."""
        config = self.put_blob(repository, b"{}")
        layer = self.put_blob(repository, bundle)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": BUNDLE_ARTIFACT_TYPE,
                "config": {"mediaType": OCI_EMPTY, "size": 2, "digest": config},
                "layers": [{"mediaType": BUNDLE_ARTIFACT_TYPE, "size": len(bundle), "digest": layer}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 0},
            }
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        answer = self.put_manifest(repository, digest, manifest, OCI_MANIFEST)
        assert answer.status_code == 201, answer.text
        algorithm, _, hex_digest = subject.partition(":")
        tag = f"{algorithm[:32]}-{hex_digest[:64]}"
        existing = self.get_manifest(repository, tag)
        index: dict[str, Any] = (
            json.loads(existing) if existing else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        )
        index["manifests"].append(
            {"mediaType": OCI_MANIFEST, "size": len(manifest), "digest": digest, "artifactType": BUNDLE_ARTIFACT_TYPE}
        )
        answer = self.put_manifest(repository, tag, json.dumps(index).encode(), OCI_INDEX)
        assert answer.status_code == 201, answer.text
        return digest

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
def running_registry(
    workdir: Path,
    ca: TestCA,
    *,
    port: int | None = None,
    auth: Literal["htpasswd", "token"] | None = None,
    address: str = "127.0.0.1",
) -> Iterator[Registry]:
    """`address`: where it listens, also in its certificate (the real cluster's pods reach the node's 198.18.255.1,
    never loopback; give a fixed `port` there: a free port on loopback may be a client's source port on it)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    cert = ca.issue("registry", hosts=tuple(dict.fromkeys((address, "127.0.0.1", "localhost"))))
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {
            "addr": f"{address}:{port}",
            "tls": {"certificate": str(cert.cert), "key": str(cert.key)},
            "debug": {"addr": ""},
        },
    }
    host = f"{address}:{port}"
    with ExitStack() as stack:
        login = REGISTRY_LOGIN if auth else None
        token_service = None
        if auth == "htpasswd":
            config["auth"] = {
                "htpasswd": {"realm": "edgetrust-test", "path": str(_htpasswd(workdir / "htpasswd", REGISTRY_LOGIN))}
            }
        elif auth == "token":
            token_service = stack.enter_context(running_token_service(ca, REGISTRY_LOGIN))
            config["auth"] = {
                "token": {
                    "realm": token_service.realm,
                    "service": token_service.service,
                    "issuer": token_service.issuer,
                    "rootcertbundle": str(ca.ca_file),
                }
            }
        auth_file = write_auth_file(workdir / "home" / ".docker" / "config.json", host, login) if login else None
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(config))

        def answering() -> bool:
            answer = httpx.get(
                f"https://{host}/v2/", verify=ssl.create_default_context(cafile=str(ca.ca_file)), timeout=1
            )
            return answer.status_code == (401 if auth else 200)

        stack.enter_context(
            running([registry_binary(), "serve", str(config_path)], ready=answering, log=workdir / "registry.log")
        )
        yield Registry(
            host=host,
            ca=ca,
            workdir=workdir,
            port=port,
            login=login,
            auth_file=auth_file,
            token_service=token_service,
        )


def _layer(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)
