"""The admission plane on a real node: `helm install` of the chart with no values (the webhook alone, enforcing the
default policy library in its image), then pods through the API server: one that runs, ones that are refused.
Then a policy bundle of the site's with an image-signature policy: an image pushed with oras and signed with
cosign runs (and a Deployment of it rolls out), an unsigned one is refused.

The node is localpeers.realcluster's (kubelet, containerd, kube-proxy, kube-router on this machine), started here
unless `make demo` hands over the one it shares between the planes; images are the ones `make images` built,
imported into the node's containerd (no registry on the internet is reachable). Files under `.demo/admission`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from demo.node import RealNode, real_node
from demo.shell import command, note, say
from localpeers import chartrelease
from localpeers.admissionrelease import (
    SIGNED_POLICY,
    deployment,
    fresh_namespace,
    signed_bundle_values,
    signed_images,
    wait_running,
    workload_pod,
)
from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.peers import peer

RELEASE, NAMESPACE, SHOP = "edgetrust", "edgetrust-system", "shop"


class _Demo:
    def __init__(self, node: RealNode, root: Path) -> None:
        self.node, self.root = node, root
        self.outcomes: dict[str, bool] = {}

    def kubectl(self, *args: str, manifest: dict[str, Any] | None = None, show: int = 12) -> tuple[int, str]:
        """Show the kubectl line, run it, show its first lines of output."""
        stdin = None
        shown: list[str | Path] = ["kubectl", *args]
        if manifest is not None:
            file = self.root / "objects" / f"{manifest['kind'].lower()}-{manifest['metadata']['name']}.json"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(manifest, indent=2))
            shown += ["-f", file]
            stdin = json.dumps(manifest)
            args = (*args, "-f", "-")
        command(shown)
        done = self.node.cluster.kubectl(*args, stdin=stdin, check=False, timeout_s=180)
        lines = (done.stdout + done.stderr).strip().splitlines()
        for line in lines[:show]:
            say(f"     {line[:300]}")
        return done.returncode, done.stdout + done.stderr

    def expect(self, title: str, ok: bool) -> None:
        self.outcomes[title] = ok
        say(f"   -> {'as expected' if ok else 'NOT AS EXPECTED'}: {title}")

    def helm(self, verb: str, values: dict[str, Any], file: str) -> float:
        values_file = self.root / file
        values_file.write_text(json.dumps(values, indent=2))
        command(
            ["helm", verb, *(["--install"] if verb == "upgrade" else []), RELEASE, chartrelease.CHART,
             "--namespace", NAMESPACE, "--create-namespace", "-f", values_file, "--wait"]
        )  # fmt: skip
        return chartrelease.install(
            self.node.cluster, RELEASE, NAMESPACE, values, work=self.root / "helm", timeout_s=240
        )


def run(node: RealNode) -> int:
    root = Path(".demo/admission").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    demo = _Demo(node, root)
    cluster, images = node.cluster, node.images
    note(f"kubectl is {peer('kubectl')} with --kubeconfig {cluster.kubeconfig} (the cluster admin)")
    try:
        say("== 1. helm install with no values: the webhook alone, on the default policy library in its image")
        note("the images' values only (make images built them; imported into the node, pullPolicy Never)")
        seconds = demo.helm("install", images.helm_values(), "images-values.json")
        say(f"   install_to_ready_s: {seconds:.1f} (helm install --wait: 2 webhook replicas + OPA sidecars Ready)")
        demo.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide")
        command(["kubectl", "create", "namespace", SHOP])
        fresh_namespace(cluster, SHOP)

        say("== 2. A compliant pod (a tagged image, no privilege): admitted, with the warn-mode policies' warnings")
        code, _ = demo.kubectl("create", manifest=workload_pod("app", SHOP, TOOLS_IMAGE, command=["sleep", "3600"]))
        running = code == 0 and wait_running(cluster, SHOP, "app")["status"]["phase"] == "Running"
        demo.kubectl("get", "pod", "app", "-n", SHOP, "-o", "wide")
        demo.expect("compliant pod Running", running)

        say("== 3. Pods the library refuses (the API server asks the webhook through its Service)")
        privileged = workload_pod("privileged", SHOP, TOOLS_IMAGE, securityContext={"privileged": True})
        untagged = workload_pod("untagged", SHOP, TOOLS_IMAGE.rpartition(":")[0])
        for manifest, reason in ((privileged, "[no_privileged]"), (untagged, "[disallow_latest_tag]")):
            code, text = demo.kubectl("create", manifest=manifest)
            demo.expect(f"{manifest['metadata']['name']} pod refused by {reason}", code != 0 and reason in text)
        host = workload_pod("hostnet", SHOP, TOOLS_IMAGE)
        host["spec"]["hostNetwork"] = True
        code, text = demo.kubectl("create", manifest=host)
        demo.expect("hostNetwork pod refused by [no_host_namespaces]", code != 0 and "[no_host_namespaces]" in text)

        with ExitStack() as stack:
            say("== 4. Signed images: a TLS registry on the node's address; oras push; cosign sign (no Rekor)")
            signed = stack.enter_context(signed_images(cluster, images, root / "signing"))
            host_name = signed.registry.host
            command(["registry", "serve", root / "signing" / "registry" / "config.yml"], suffix=" &")
            command(["oras", "cp", "--from-oci-layout", "pause.oci:1.0", f"{signed.repository}:1.0"])
            command(["cosign", "sign", "--yes", "--key", signed.cosign_key, "--tlog-upload=false", signed.pinned()])
            command(["oras", "push", f"{signed.unsigned_repository}:1.0", "layer.tar.gz"], suffix="   # never signed")
            note(
                f"ctr -n k8s.io images tag {images.references['pause']} {signed.pinned()}  (the kubelet needs no pull)"
            )
            say(f"   signed   {signed.pinned()}")
            say(f"   unsigned {signed.unsigned_repository}@{signed.unsigned}")

            say("== 5. helm upgrade: the site's bundle (library + an image-signature policy), its key, the registry CA")
            values = signed_bundle_values(signed, root / "bundle")
            note(
                f"trustctl policy build: policies/admission + {SIGNED_POLICY}/policy.yaml (cosign.pub for "
                f"{host_name}/edgetrust/*), allowed_repos {host_name}/, signed with a fresh publisher key ci-1"
            )
            seconds = demo.helm(
                "upgrade", chartrelease.merge_values(images.helm_values(), values), "signed-values.json"
            )
            say(f"   upgraded in {seconds:.1f} s (the webhook verified the bundle at start)")

            say("== 6. The signed image runs; the unsigned one is refused; a Deployment of the signed one rolls out")
            code, _ = demo.kubectl(
                "create", manifest=workload_pod("signed", SHOP, signed.pinned(), pull="IfNotPresent")
            )
            running = code == 0 and wait_running(cluster, SHOP, "signed")["status"]["phase"] == "Running"
            demo.expect("signed image Running", running)
            unsigned = f"{signed.unsigned_repository}@{signed.unsigned}"
            code, text = demo.kubectl("create", manifest=workload_pod("unsigned", SHOP, unsigned, pull="IfNotPresent"))
            demo.expect(f"unsigned image refused by [{SIGNED_POLICY}]", code != 0 and f"[{SIGNED_POLICY}]" in text)
            demo.kubectl("create", manifest=deployment("signed-app", SHOP, signed.pinned()))
            code, _ = demo.kubectl("rollout", "status", "deployment/signed-app", "-n", SHOP, "--timeout=120s")
            demo.expect("Deployment of the signed image rolled out", code == 0)
            demo.kubectl("get", "pods", "-n", SHOP, "-o", "wide")
    finally:
        say("== 7. Clean up: helm uninstall, the demo's namespace")
        command(["helm", "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])
        chartrelease.uninstall(cluster, RELEASE, NAMESPACE)
        command(["kubectl", "delete", "namespace", SHOP])
        cluster.kubectl("delete", "namespace", SHOP, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)

    say("== Summary")
    for title, ok in demo.outcomes.items():
        say(f"   {'ok  ' if ok else 'FAIL'} {title}")
    return 0 if demo.outcomes and all(demo.outcomes.values()) else 1


def main(node: RealNode | None = None) -> int:
    """The demo on `node`, or on a node started (and stopped) here."""
    if node is not None:
        return run(node)
    started = time.monotonic()
    with real_node(Path(".demo/node")) as own:
        code = run(own)
    say(f"   (admission plane with its own node: {time.monotonic() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
