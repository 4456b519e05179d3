"""A real kube-apiserver (built from k8s.io/kubernetes by hack/install-peers) over a real etcd, on loopback.

Only the API server and its store: no scheduler, controller manager or kubelet, so Pods are stored and stay
Pending, which is all an admission test needs. The ServiceAccount admission plugin is off because the
controller that creates default service accounts is not running; service accounts made by a test get real
bound tokens from the TokenRequest API (`KubeAPI.service_account_token`), and `ProjectedAccount` lays them out
the way the kubelet projects them into a pod, rotation included. Client certificates of the test CA are
accepted too (`--client-ca-file`): a certificate's CN is its user name.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localpeers.hub import free_port
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.tlsca import TestCA


@dataclass(frozen=True)
class KubeAPI:
    url: str
    token: str
    ca_file: Path

    def write_kubeconfig(self, path: Path) -> Path:
        """For kubectl-shaped peers (helm): this API server, its CA, the admin token; 0600."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=30,
        )

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def grant(self, subject: dict[str, str], name: str, rules: list[dict[str, object]]) -> None:
        """A ClusterRole with `rules`, bound to `subject` ({"kind": "ServiceAccount", "name", "namespace"} or
        {"kind": "User", "name"})."""
        if subject["kind"] == "User":
            subject = {**subject, "apiGroup": "rbac.authorization.k8s.io"}
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}}
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [subject],
        }
        with self.client() as client:
            made = client.post("/apis/rbac.authorization.k8s.io/v1/clusterroles", json={**role, "rules": rules})
            assert made.status_code == 201, made.text
            bound = client.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json=binding)
            assert bound.status_code == 201, bound.text

    def service_account(self, namespace: str, name: str) -> None:
        with self.client() as client:
            found = client.get(f"/api/v1/namespaces/{namespace}")
            if found.status_code == 404:
                made = client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
                assert made.status_code == 201, made.text
            account = client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", json={"metadata": {"name": name}})
            assert account.status_code == 201, account.text

    def service_account_token(self, namespace: str, name: str, *, bound_to: str, expiration_s: int = 3600) -> str:
        """A bound token of the service account from the TokenRequest API, as the kubelet asks for one; bound
        to a Secret named `bound_to` (made here), so that deleting the Secret revokes the token at once."""
        with self.client() as client:
            secret = client.post(f"/api/v1/namespaces/{namespace}/secrets", json={"metadata": {"name": bound_to}})
            assert secret.status_code == 201, secret.text
            request = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": expiration_s,
                    "boundObjectRef": {
                        "kind": "Secret",
                        "apiVersion": "v1",
                        "name": bound_to,
                        "uid": secret.json()["metadata"]["uid"],
                    },
                },
            }
            issued = client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", json=request)
            assert issued.status_code == 201, issued.text
            return str(issued.json()["status"]["token"])

    def revoke_service_account_token(self, namespace: str, bound_to: str, token: str) -> None:
        """Delete the Secret the token is bound to, and wait until the API server refuses the token (it keeps
        a token it accepted in its authentication cache for up to 10 s)."""
        with self.client() as client:
            assert client.delete(f"/api/v1/namespaces/{namespace}/secrets/{bound_to}").status_code == 200
            deadline = time.monotonic() + 30
            while client.get("/api", headers={"Authorization": f"Bearer {token}"}).status_code != 401:
                assert time.monotonic() < deadline, f"the token bound to {bound_to} is still accepted"
                time.sleep(0.2)


class ProjectedAccount:
    """A service-account folder as the kubelet projects it into a pod: `token` and `ca.crt` are links through
    `..data` to a timestamped folder, and a rotation writes a new folder and swaps `..data` atomically."""

    def __init__(self, directory: Path, token: str, ca_file: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = ca_file.read_bytes()
        self._generation = 0
        self.rotate(token)
        for name in ("token", "ca.crt"):
            (directory / name).symlink_to(Path("..data") / name)

    def rotate(self, token: str) -> None:
        self._generation += 1
        payload = self.directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self._generation}"
        payload.mkdir()
        (payload / "token").write_text(token)
        (payload / "ca.crt").write_bytes(self._ca)
        data = self.directory / "..data"
        previous = data.resolve() if data.is_symlink() else None
        staged = self.directory / "..data_tmp"
        staged.symlink_to(payload.name)
        os.replace(staged, data)
        if previous is not None:
            shutil.rmtree(previous)


@contextmanager
def running_etcd(workdir: Path) -> Iterator[str]:
    client_port = free_port()
    peer_port = free_port()
    while peer_port == client_port:  # the OS may hand out the same free port twice in a row
        peer_port = free_port()
    url = f"http://127.0.0.1:{client_port}"
    argv = [
        str(peer("etcd")),
        "--name=edgetrust-test",
        f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=edgetrust-test=http://127.0.0.1:{peer_port}",
        "--log-level=error",
        "--unsafe-no-fsync",  # a test store: durability across power loss is not what is tested
    ]

    def healthy() -> bool:
        return bool(httpx.get(f"{url}/health", timeout=1).json().get("health") == "true")

    with running(argv, ready=healthy, log=workdir / "etcd.log", timeout_s=30):
        yield url


@contextmanager
def running_kube_apiserver(
    workdir: Path,
    ca: TestCA,
    *,
    extra_args: Sequence[str] = (),
    address: str = "127.0.0.1",
    service_range: str = "10.96.0.0/24",
    serving_hosts: Sequence[str] = (),
    with_nodes: bool = False,
    port: int | None = None,
) -> Iterator[KubeAPI]:
    """The API server on `address`; `with_nodes` turns on what a cluster with a real kubelet needs (the note
    /work/shared/notes/real-cluster.md): the Node authorizer and NodeRestriction, the ServiceAccount admission
    plugin (a controller manager makes the default accounts), a client certificate for calls to kubelets
    (logs, exec), checked kubelet serving certificates, and the lease reconciler that writes the `kubernetes`
    Service's endpoints for `address`. `port` (default: a free one on loopback) is for an address that
    loopback's free ports say nothing about."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{token},edgetrust-admin,1,"system:masters"\n')
    tokens.chmod(0o600)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "sa.key").write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (workdir / "sa.key").chmod(0o600)
    (workdir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hosts = ("127.0.0.1", "localhost", "kubernetes.default.svc", *serving_hosts)
    serving = ca.issue("kube-apiserver", hosts=tuple(dict.fromkeys((address, *hosts))))
    if with_nodes:
        kubelet_client = ca.issue("kube-apiserver-kubelet-client", client=True, organizations=("system:masters",))
        node_args = [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",  # else logs and exec look the node name up in DNS
            "--endpoint-reconciler-type=lease",
        ]
    else:
        node_args = [
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",  # it refuses a loopback advertise address otherwise
        ]
    port = port or free_port()
    with running_etcd(workdir) as etcd_url:
        argv = [
            str(peer("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--token-auth-file={tokens}",
            f"--client-ca-file={ca.ca_file}",
            f"--service-account-key-file={workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={service_range}",
            "--allow-privileged=true",  # so that privileged pods reach the webhook, which decides
            *node_args,
            f"--cert-dir={workdir / 'certs'}",
            "--v=0",
            *extra_args,
        ]
        api = KubeAPI(url=f"https://{address}:{port}", token=token, ca_file=ca.ca_file)

        def ready() -> bool:
            with api.client() as client:
                return client.get("/readyz", timeout=2).status_code == 200

        with running(argv, ready=ready, log=workdir / "kube-apiserver.log", timeout_s=90):
            yield api


POD_BEARING_RULE = {
    "operations": ["CREATE", "UPDATE"],
    "apiGroups": ["", "apps", "batch"],
    "apiVersions": ["v1"],
    "resources": ["pods", "deployments", "statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs"],
    "scope": "Namespaced",
}


def validating_webhook(
    url: str,
    ca_file: Path,
    *,
    name: str = "edgetrust",
    rules: list[dict[str, object]] | None = None,
    excluded_namespaces: tuple[str, ...] = ("kube-system",),
) -> dict[str, object]:
    """What the chart installs: fail closed, and the excluded namespaces never sent to the webhook."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "validate.edgetrust.io",
                "clientConfig": {"url": f"{url}/validate", "caBundle": base64.b64encode(ca_file.read_bytes()).decode()},
                "rules": rules or [POD_BEARING_RULE],
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(excluded_namespaces)}
                    ]
                },
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }
