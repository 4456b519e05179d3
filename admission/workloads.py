"""Where pod specs live in every pod-bearing kind, so one check covers a Pod and everything that makes Pods.

Each image comes back with the JSON pointer of its field, which is what the mutating answer patches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# kind -> path from the object to its PodSpec
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")
MAX_CONTAINERS = 256  # the API server has no hard limit; a pod with more is an attack on our latency


@dataclass(frozen=True, slots=True)
class ContainerImage:
    container: str
    image: str
    pointer: str


def pod_spec(kind: str, obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str] | None:
    path = POD_SPEC_PATHS.get(kind)
    if path is None:
        return None
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    return node, "/" + "/".join(path)


def container_images(kind: str, obj: Mapping[str, Any]) -> list[ContainerImage]:
    found = pod_spec(kind, obj)
    if found is None:
        return []
    spec, prefix = found
    return list(_images(spec, prefix))[:MAX_CONTAINERS]


def _images(spec: Mapping[str, Any], prefix: str) -> Iterator[ContainerImage]:
    for field in CONTAINER_FIELDS:
        containers = spec.get(field)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            image = container.get("image")
            name = container.get("name")
            yield ContainerImage(
                container=name if isinstance(name, str) else f"{field}[{index}]",
                image=image if isinstance(image, str) else "",
                pointer=f"{prefix}/{field}/{index}/image",
            )
