"""The admission plane: a real kube-apiserver calls our webhook, which asks a real OPA and checks signatures
that the real cosign wrote into a real registry. Everything lives in `.demo/admission`; all processes stop.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from demo.shell import BIN, command, curl, note, say
from localpeers.hub import free_port
from localpeers.kube import KubeAPI, running_kube_apiserver, validating_webhook
from localpeers.opa_server import opa_server
from localpeers.processes import running
from localpeers.registry import running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, workload


def _post(client: httpx.Client, kube: KubeAPI, path: str, obj: dict[str, Any], file: Path) -> httpx.Response:
    """Create `obj` through the API server, shown as the curl line a person would type (`kubectl create -f`
    where kubectl is installed); the object is written to `file` for it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(obj, indent=2))
    curl("POST", f"{kube.url}{path}", ca_file=kube.ca_file, body=file, token=True)
    return client.post(path, json=obj)


def main() -> int:
    root = Path(".demo/admission").resolve()
    if root.exists():
        shutil.rmtree(root)  # etcd's data from an earlier run would hold the demo's objects already
    root.mkdir(parents=True)
    outcomes: dict[str, bool] = {}
    with ExitStack() as stack:
        ca = TestCA(root / "ca")
        say("== 1. A TLS OCI registry (CNCF distribution) and OPA, on loopback")
        note("a CNCF distribution registry (registry serve) with a TLS certificate of the demo's CA")
        registry = stack.enter_context(running_registry(root / "registry", ca))
        opa = stack.enter_context(opa_server(root / "opa"))
        command(["opa", "run", "--server", "--v0-compatible", "--addr", f"127.0.0.1:{opa.port}"], suffix=" &")
        say(f"   registry https://{registry.host}; OPA {opa.url}")

        say("== 2. Two images pushed with oras; only edge/app is signed, with cosign and the release key")
        oras_config = "config.json:application/vnd.oci.image.config.v1+json"
        oras_layer = "layer.tar.gz:application/vnd.oci.image.layer.v1.tar+gzip"
        for image in ("edge/app", "edge/tool"):
            command(
                [
                    "oras",
                    "push",
                    "--ca-file",
                    ca.ca_file,
                    "--config",
                    oras_config,
                    f"{registry.host}/{image}:1.0",
                    oras_layer,
                ]
            )
        app_digest = registry.push_image("edge/app", "1.0", content=b"the app")
        registry.push_image("edge/tool", "1.0", content=b"someone's tool")
        key, public = registry.cosign_keypair("release")
        command(["cosign", "generate-key-pair"], suffix=f"  # in {key.parent.relative_to(Path.cwd().resolve())}")
        signed = f"{registry.host}/edge/app@{app_digest}"
        command(["cosign", "sign", "--yes", "--key", key, "--tlog-upload=false", signed])
        registry.cosign_sign(signed, key)
        say(f"   {registry.host}/edge/app:1.0 = {app_digest[:19]}..., signed (.sig stored beside it)")

        say("== 3. The webhook (edgetrust-admission) with the policy library and a signature policy")
        signature_policy = {
            "type": "image-signature",
            "images": [f"{registry.host}/edge/*"],
            "keys": ["release.pub"],
            "files": {"release.pub": public.read_bytes()},
        }
        policies = policy_dir(root / "policies", extra={"signed_images": signature_policy})
        note(f"the repository's policies/admission, plus {policies}/signed_images/policy.yaml and release.pub")
        say(f"   policies: {', '.join(sorted(p.name for p in policies.iterdir()))}")
        cert, port = ca.issue("webhook"), free_port()
        url = f"https://127.0.0.1:{port}"
        webhook_argv: list[str | Path] = [
            BIN / "edgetrust-admission", "serve", "--policy-dir", policies, "--opa-port", str(opa.port),
            "--registry-ca-file", ca.ca_file, "--listen", f"127.0.0.1:{port}", "--tls-cert", cert.cert,
            "--tls-key", cert.key,
        ]  # fmt: skip
        log = root / "webhook.log"
        command(webhook_argv, suffix=f" > {log.relative_to(Path.cwd().resolve())} 2>&1 &")
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        stack.enter_context(
            running(
                [str(a) for a in webhook_argv],
                ready=lambda: httpx.get(f"{url}/readyz", verify=context, timeout=1).status_code == 200,
                log=log,
            )
        )
        say(f"   serving {url}/validate and /mutate")

        say("== 4. A real kube-apiserver (and etcd) calling the webhook through a ValidatingWebhookConfiguration")
        note("etcd and kube-apiserver on loopback; the API server's admin token is $TOKEN below (not printed)")
        kube = stack.enter_context(running_kube_apiserver(root / "kube", ca))
        client = stack.enter_context(kube.client())
        objects = root / "objects"
        shop = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
        _post(client, kube, "/api/v1/namespaces", shop, objects / "namespace-shop.json").raise_for_status()
        _post(
            client,
            kube,
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            validating_webhook(url, ca.ca_file),
            objects / "validating-webhook.json",
        ).raise_for_status()
        note("wait until the API server calls the webhook (a dry-run Pod of the unsigned image, until refused)")
        probe = pod(f"{registry.host}/edge/tool:1.0", name="probe")
        deadline = time.monotonic() + 20
        while client.post("/api/v1/namespaces/shop/pods", json=probe, params={"dryRun": "All"}).status_code == 201:
            if time.monotonic() > deadline:
                raise SystemExit("the API server never called the webhook")
            time.sleep(0.2)
        say(f"   kube-apiserver {kube.url} (v{_version(client)}) now sends pods and workloads to us")

        cases = [
            ("signed image", "shop", pod(f"{registry.host}/edge/app:1.0", name="app"), True),
            ("unsigned image", "shop", pod(f"{registry.host}/edge/tool:1.0", name="tool"), False),
            (
                "Deployment of the unsigned image",
                "shop",
                workload("Deployment", pod(f"{registry.host}/edge/tool:1.0", name="tools")),
                False,
            ),
            (
                "privileged, signed",
                "shop",
                pod(f"{registry.host}/edge/app:1.0", name="root", security={"privileged": True}),
                False,
            ),
            (
                "unsigned in kube-system (exempt)",
                "kube-system",
                pod(f"{registry.host}/edge/tool:1.0", name="sys"),
                True,
            ),
        ]
        for title, namespace, obj, expected in cases:
            group = "api/v1" if obj["kind"] == "Pod" else "apis/apps/v1"
            say(f"== 5. {title}: {obj['kind']} {namespace}/{obj['metadata']['name']}")
            name = f"{obj['kind'].lower()}-{namespace}-{obj['metadata']['name']}.json"
            answer = _post(client, kube, f"/{group}/namespaces/{namespace}/{obj['kind'].lower()}s", obj, objects / name)
            admitted = answer.status_code == 201
            outcomes[title] = admitted == expected
            say(f"   -> {'ADMITTED' if admitted else 'REJECTED'}")
            if not admitted:
                say(f"   {answer.json().get('message', answer.text)[:400]}")

        say("== 6. The mutating endpoint pins the verified tag to its digest")
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "demo-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "shop",
                "name": "pinned",
                "object": pod(f"{registry.host}/edge/app:1.0", name="pinned"),
            },
        }
        review_file = objects / "review-pinned.json"
        review_file.write_text(json.dumps(review, indent=2))
        curl("POST", f"{url}/mutate", ca_file=ca.ca_file, body=review_file)
        answer = httpx.post(f"{url}/mutate", json=review, verify=context).json()["response"]
        patch = json.loads(base64.b64decode(answer.get("patch", "") or "W10="))
        outcomes["pinned to digest"] = bool(patch) and patch[0]["value"].endswith(app_digest)
        for op in patch:
            say(f"   {op['op']} {op['path']} -> {op['value']}")

    say("== Summary")
    for title, ok in outcomes.items():
        say(f"   {'ok  ' if ok else 'FAIL'} {title}")
    return 0 if all(outcomes.values()) else 1


def _version(client: httpx.Client) -> str:
    return str(client.get("/version").json().get("gitVersion", "?")).lstrip("v")


if __name__ == "__main__":
    sys.exit(main())
