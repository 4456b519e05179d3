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

import httpx

from localpeers.kube import running_kube_apiserver, validating_webhook
from localpeers.opa_server import opa_server
from localpeers.registry import running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, webhook_process, workload


def _say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    root = Path(".demo/admission").resolve()
    if root.exists():
        shutil.rmtree(root)  # etcd's data from an earlier run would hold the demo's objects already
    root.mkdir(parents=True)
    outcomes: dict[str, bool] = {}
    with ExitStack() as stack:
        ca = TestCA(root / "ca")
        _say("== 1. A TLS OCI registry (CNCF distribution) and OPA, on loopback")
        registry = stack.enter_context(running_registry(root / "registry", ca))
        opa = stack.enter_context(opa_server(root / "opa"))
        _say(f"   registry https://{registry.host}; OPA {opa.url}")

        _say("== 2. Two images pushed with oras; only edge/app is signed, with cosign and the release key")
        app_digest = registry.push_image("edge/app", "1.0", content=b"the app")
        registry.push_image("edge/tool", "1.0", content=b"someone's tool")
        key, public = registry.cosign_keypair("release")
        registry.cosign_sign(f"{registry.host}/edge/app@{app_digest}", key)
        _say(f"   {registry.host}/edge/app:1.0 = {app_digest[:19]}..., signed (.sig stored beside it)")

        _say("== 3. The webhook (edgetrust-admission) with the policy library and a signature policy")
        signature_policy = {
            "type": "image-signature",
            "images": [f"{registry.host}/edge/*"],
            "keys": ["release.pub"],
            "files": {"release.pub": public.read_bytes()},
        }
        policies = policy_dir(root / "policies", extra={"signed_images": signature_policy})
        _say(f"   policies: {', '.join(sorted(p.name for p in policies.iterdir()))}")
        webhook = stack.enter_context(
            webhook_process(root / "webhook", ca, policy_dir=policies, opa_port=opa.port, registry_ca_file=ca.ca_file)
        )
        url = webhook.url
        _say(f"   serving {url}/validate and /mutate")

        _say("== 4. A real kube-apiserver (and etcd) calling the webhook through a ValidatingWebhookConfiguration")
        kube = stack.enter_context(running_kube_apiserver(root / "kube", ca))
        client = stack.enter_context(kube.client())
        client.post("/api/v1/namespaces", json={"metadata": {"name": "shop"}}).raise_for_status()
        client.post(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            json=validating_webhook(url, ca.ca_file),
        ).raise_for_status()
        probe = pod(f"{registry.host}/edge/tool:1.0", name="probe")
        deadline = time.monotonic() + 20
        while client.post("/api/v1/namespaces/shop/pods", json=probe, params={"dryRun": "All"}).status_code == 201:
            if time.monotonic() > deadline:
                raise SystemExit("the API server never called the webhook")
            time.sleep(0.2)
        _say(f"   kube-apiserver {kube.url} (v{_version(client)}) now sends pods and workloads to us")

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
            answer = client.post(f"/{group}/namespaces/{namespace}/{obj['kind'].lower()}s", json=obj)
            admitted = answer.status_code == 201
            outcomes[title] = admitted == expected
            verdict = "ADMITTED" if admitted else "REJECTED"
            _say(f"== 5. {title}: {obj['kind']} {namespace}/{obj['metadata']['name']} -> {verdict}")
            if not admitted:
                _say(f"   {answer.json().get('message', answer.text)[:400]}")

        _say("== 6. The mutating endpoint pins the verified tag to its digest")
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
        answer = httpx.post(
            f"{url}/mutate", json=review, verify=ssl.create_default_context(cafile=str(ca.ca_file))
        ).json()["response"]
        patch = json.loads(base64.b64decode(answer.get("patch", "") or "W10="))
        outcomes["pinned to digest"] = bool(patch) and patch[0]["value"].endswith(app_digest)
        for op in patch:
            _say(f"   {op['op']} {op['path']} -> {op['value']}")

    _say("== Summary")
    for title, ok in outcomes.items():
        _say(f"   {'ok  ' if ok else 'FAIL'} {title}")
    return 0 if all(outcomes.values()) else 1


def _version(client: httpx.Client) -> str:
    return str(client.get("/version").json().get("gitVersion", "?")).lstrip("v")


if __name__ == "__main__":
    sys.exit(main())
