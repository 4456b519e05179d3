"""Where pod specs live in every pod-bearing kind, so one check covers a Pod and everything that makes Pods.

Each image comes back with the JSON pointer of its field, which is what the mutating answer patches.

The walk is strict: a pod-bearing object whose pod spec or container lists are not shaped as the API server
shapes them, or that holds more containers than we check, is refused (`WorkloadShapeError`), never walked in
part. A check that silently skipped the 257th container, or a container that is not an object, would admit
what it never looked at.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from admission.errors import WorkloadShapeError

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
# The API server has no hard limit; a pod with more is an attack on our latency, and is refused whole.
MAX_CONTAINERS = 256


@dataclass(frozen=True, slots=True)
class ContainerImage:
    container: str
    image: str
    pointer: str


def pod_spec(kind: str, obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str] | None:
    """The pod spec of a pod-bearing kind and its JSON pointer; None for other kinds or a spec that is absent."""
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
    """Every container's image, all of them, or WorkloadShapeError: there is no partial answer."""
    path = POD_SPEC_PATHS.get(kind)
    if path is None:
        return []
    found = pod_spec(kind, obj)
    if found is None:
        raise WorkloadShapeError(f"{kind} has no pod spec at .{'.'.join(path)}")
    spec, prefix = found
    if len(path) > 1:  # the template's metadata labels the Pods it makes: constraints match on them
        template: Any = obj
        for part in path[:-1]:
            template = template.get(part) if isinstance(template, dict) else None
        metadata = template.get("metadata") if isinstance(template, dict) else None
        if metadata is not None and not isinstance(metadata, dict):
            raise WorkloadShapeError(f"{kind} pod template metadata is a {type(metadata).__name__}, not an object")
    images = list(_images(spec, prefix))
    if len(images) > MAX_CONTAINERS:
        raise WorkloadShapeError(
            f"{kind} has {len(images)} containers, over the {MAX_CONTAINERS} this webhook checks; refused unchecked"
        )
    return images


def _images(spec: Mapping[str, Any], prefix: str) -> Iterator[ContainerImage]:
    for field in CONTAINER_FIELDS:
        containers = spec.get(field)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise WorkloadShapeError(f"pod spec field {field} is a {type(containers).__name__}, not a list")
        for index, container in enumerate(containers):
            if not isinstance(container, dict):
                raise WorkloadShapeError(f"{field}[{index}] is a {type(container).__name__}, not a container")
            image = container.get("image")
            name = container.get("name")
            yield ContainerImage(
                container=name if isinstance(name, str) else f"{field}[{index}]",
                image=image if isinstance(image, str) else "",
                pointer=f"{prefix}/{field}/{index}/image",
            )
