"""The chart on the real cluster: the images `make images` built, imported into the node's containerd, and the
chart installed with the pinned helm, waited on until its pods are Ready.

No registry on the internet is reachable here, so the node never pulls: the OCI archives are imported into
containerd's k8s.io namespace (the OCI archive keeps the built digest; a docker-archive would not) and the chart's
pods use `pullPolicy: Never`. `helm_values()` gives the image values; tests add their own on top.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localpeers import images as image_builder
from localpeers.peers import peer
from localpeers.realcluster import RealCluster

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "edgetrust"
HELM_HOME = {"HELM_CACHE_HOME": "/tmp/edgetrust-helm/cache", "HELM_CONFIG_HOME": "/tmp/edgetrust-helm"}


class ChartReleaseError(RuntimeError):
    """The images or the release could not be brought up; the message says what helm or kubectl printed."""


def helm(*argv: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The pinned helm, with its cache and config outside the user's home; a failure raises with its output."""
    env = {**os.environ, **HELM_HOME}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run([str(peer("helm")), *argv], capture_output=True, text=True, env=env, check=False)
    if check and done.returncode != 0:
        raise ChartReleaseError(f"helm {' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done


@dataclass(frozen=True)
class ClusterImages:
    """The built images, by short name (edgetrust, opa, pause): their reference and digest, present on the node."""

    references: dict[str, str]
    digests: dict[str, str]
    manifest: Path

    def repository(self, name: str) -> str:
        return self.references[name].rsplit(":", 1)[0]

    def tag(self, name: str) -> str:
        return self.references[name].rsplit(":", 1)[1]

    def helm_values(self) -> dict[str, Any]:
        """The chart values that make every pod run the imported images, never pulling."""
        return {
            "image": {"repository": self.repository("edgetrust"), "tag": self.tag("edgetrust"), "pullPolicy": "Never"},
            "webhook": {"opa": {"image": {"repository": self.repository("opa"), "tag": self.tag("opa")}}},
        }


def built_images() -> Path:
    """images.json of this checkout's commit, building what is missing (cached per commit: seconds when warm)."""
    try:
        return image_builder.build()
    except image_builder.BuildError as error:
        raise ChartReleaseError(f"make images failed: {error}") from error


def load_images(cluster: RealCluster) -> ClusterImages:
    """Build (if needed) and import the three images into the node's containerd."""
    manifest = built_images()
    report = json.loads(manifest.read_text())
    references: dict[str, str] = {}
    digests: dict[str, str] = {}
    for short, summary in report["images"].items():
        cluster.import_image(Path(summary["oci_archive"]))
        references[short] = summary["name"]
        digests[short] = summary["digest"]
    return ClusterImages(references, digests, manifest)


def merge_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge value dictionaries, later ones winning (as helm merges several -f files)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_values(merged[key], value)
            else:
                merged[key] = value
    return merged


def install(
    cluster: RealCluster,
    release: str,
    namespace: str,
    values: dict[str, Any],
    *,
    work: Path,
    extra_args: tuple[str, ...] = (),
    timeout_s: int = 240,
) -> float:
    """`helm upgrade --install --wait` of the chart with `values` (written to a file: helm reads -f like a user's
    values.yaml); returns the seconds from the command to every pod of the release Ready."""
    work.mkdir(parents=True, exist_ok=True)
    values_file = work / f"{release}-values.json"
    values_file.write_text(json.dumps(values, indent=2))
    started = time.monotonic()
    done = helm(
        "upgrade",
        "--install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "-f",
        str(values_file),
        "--wait",
        f"--timeout={timeout_s}s",
        *extra_args,
        kubeconfig=cluster.kubeconfig,
        check=False,
    )
    if done.returncode != 0:
        pods = cluster.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
        events = cluster.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
        raise ChartReleaseError(
            f"helm install {release} failed:\n{done.stdout}\n{done.stderr}\npods:\n{pods}\nevents:\n{events[-4000:]}"
        )
    return time.monotonic() - started


def fullname(release: str) -> str:
    """The chart's `edgetrust.fullname` for a release: the prefix of every object it makes."""
    name = release if "edgetrust" in release else f"{release}-edgetrust"
    return name[:50].rstrip("-")


def uninstall(cluster: RealCluster, release: str, namespace: str) -> None:
    """Remove the release and its namespace, waiting until both are gone."""
    helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=cluster.kubeconfig, check=False)
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", check=False, timeout_s=120)
