"""The policy distribution plane: trustd serves signed bundles to a cluster group; a cluster's syncer agent
long-polls over mTLS with its SVID, verifies, and applies the NetworkPolicies to a real kube-apiserver."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from demo.shell import BIN, curl, note, run, say
from edgetrust._internal.files import write_private
from localpeers.hub import RunningHub, running_policy_hub
from localpeers.kube import running_kube_apiserver
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters


def _svid(hub: RunningHub, path: str, directory: Path) -> tuple[Path, Path]:
    """An operator's, publisher's or cluster's SVID, minted on the hub as its operator would."""
    data_dir = hub.hub.settings.data_dir
    mint: list[str | Path] = [BIN / "trustd", "svid", "mint", "--data-dir", data_dir, "--trust-domain", "edge.example"]
    run([*mint, "--spiffe-id", f"spiffe://edge.example{path}", "--ttl", "2h", "--out", directory])
    return directory / "svid.pem", directory / "svid.key"


def main() -> int:
    root = Path(".demo/distribution").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ok: dict[str, bool] = {}

    say("== 1. The policy repository (policies/) and the publisher's ES256 signing key")
    repo = root / "repo"
    note(f"copy policies/ to {repo}, the policy repository of this demo")
    shutil.copytree(Path("policies"), repo)
    note(f"write {repo}/parameters.yaml: the site's registries (allowed_repos.repos); the library ships none")
    write_site_parameters(repo / "parameters.yaml")
    signing = ec.generate_private_key(ec.SECP256R1())
    key = root / "ci.key"
    note(
        f"an ES256 key pair {key} and ci-1.pem, as: openssl ecparam -name prime256v1 -genkey -noout | "
        f"openssl pkcs8 -topk8 -nocrypt -out {key}"
    )
    key.write_bytes(
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_file = root / "ci-1.pem"
    public_file.write_bytes(public)
    fleet: dict[str, object] = {
        "groups": {
            "gateways": {
                "matchLabels": {"site-class": "edge-gateway"},
                "publishers": ["spiffe://edge.example/operator/ci"],
            }
        },
        "clusters": {"site-lyon": {"labels": {"site-class": "edge-gateway"}}},
    }
    ca = TestCA(root / "ca")
    note(
        f"trustd in this process, as: trustd serve --trust-domain edge.example --fleet {root}/fleet.yaml "
        f"--verification-key {root}/publisher-keys ... (etcd and kube-apiserver started beside it)"
    )

    with (
        running_policy_hub(root, fleet=fleet, publisher_keys={"ci-1": public}) as hub,
        running_kube_apiserver(root / "kube", ca) as kube,
    ):
        say(f"== 2. trustd at {hub.url} serves cluster group 'gateways'; site-lyon's API server at {kube.url}")
        objects = root / "objects"
        objects.mkdir()
        (objects / "namespace-workloads.json").write_text('{"metadata": {"name": "workloads"}}')
        curl("POST", f"{kube.url}/api/v1/namespaces", ca_file=kube.ca_file, body=objects / "namespace-workloads.json",
             token=True)  # fmt: skip
        with kube.client() as client:
            client.post("/api/v1/namespaces", json={"metadata": {"name": "workloads"}}).raise_for_status()
        publisher_cert, publisher_key = _svid(hub, "/operator/ci", root / "publisher")
        hub_args = [
            "--hub",
            hub.url,
            "--ca-bundle",
            str(hub.ca_bundle),
            "--svid",
            str(publisher_cert),
            "--svid-key",
            str(publisher_key),
        ]

        def trustctl(*argv: str) -> str:
            return run([BIN / "trustctl", "policy", *argv]).stdout

        say("== 3. trustctl policy build + publish (revision 1)")
        bundle = root / "v1.tar.gz"
        trustctl(
            "build",
            str(repo),
            "--out",
            str(bundle),
            "--counter",
            "1",
            "--commit",
            "demo1",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
            "--group",
            "gateways",
        )
        trustctl("publish", str(bundle), "--group", "gateways", *hub_args)

        say("== 4. site-lyon's syncer: long poll over mTLS, verify the signature, apply by server-side apply")
        cluster_cert, cluster_key = _svid(hub, "/cluster/site-lyon", root / "site-lyon")
        token = root / "site-lyon" / "kube-token"
        write_private(token, kube.token.encode())
        note(f"the API server's token for the syncer in {token} (0600; a pod's service account in a cluster)")
        syncer: list[str | Path] = [
            BIN / "edgetrust-syncer", "run", "--once", "--hub", hub.url, "--ca-bundle", hub.ca_bundle,
            "--svid", cluster_cert, "--svid-key", cluster_key, "--cluster", "site-lyon", "--group", "gateways",
            "--site-class", "edge-gateway", "--verification-key", public_file, "--wait", "2",
            "--state-dir", root / "site-lyon" / "state", "--kube-url", kube.url, "--kube-token-file", token,
            "--kube-ca-file", kube.ca_file,
        ]  # fmt: skip

        def agent_round() -> bool:
            return run(syncer).returncode == 0

        def listed() -> list[str]:
            path = "/apis/networking.k8s.io/v1/namespaces/workloads/networkpolicies"
            curl("GET", f"{kube.url}{path}", ca_file=kube.ca_file, token=True)
            with kube.client() as client:
                return sorted(i["metadata"]["name"] for i in client.get(path).json()["items"])

        synced = agent_round()
        names = listed()
        say(f"   NetworkPolicies in workloads: {', '.join(names)}")
        ok["applied"] = synced and names == ["allow-dns", "allow-hub", "default-deny"]

        say("== 5. allow-hub leaves the repository; revision 2 is published and the agent prunes it")
        allow_hub = repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml"
        note(f"git rm {allow_hub}")
        allow_hub.unlink()
        bundle2 = root / "v2.tar.gz"
        trustctl(
            "build",
            str(repo),
            "--out",
            str(bundle2),
            "--counter",
            "2",
            "--commit",
            "demo2",
            "--key",
            str(key),
            "--key-id",
            "ci-1",
            "--group",
            "gateways",
        )
        trustctl("publish", str(bundle2), "--group", "gateways", *hub_args)
        synced = agent_round()
        names = listed()
        say(f"   NetworkPolicies in workloads: {', '.join(names)}")
        ok["pruned"] = synced and names == ["allow-dns", "default-deny"]

        say("== 6. a replay of revision 1 is refused by the hub; the rollout as the hub sees it")
        trustctl("publish", str(bundle), "--group", "gateways", *hub_args)
        trustctl("rollout", "status", "gateways", *hub_args)
        rollout = hub.hub.policy.rollout("gateways") if hub.hub.policy else None
        ok["reported"] = rollout is not None and "site-lyon" in rollout.applied

    say("== Summary")
    for title, passed in ok.items():
        say(f"   {'ok  ' if passed else 'FAIL'} {title}")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
