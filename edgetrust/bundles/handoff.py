"""The syncer hands each bundle it accepted to the cluster's webhook replicas through one ConfigMap.

Why a ConfigMap, bytes unchanged: every replica already talks to the API server (its inventory), so the
ConfigMap reaches all of them, survives their restarts, and is there for a replica that starts while the hub
is unreachable. It is not trusted: it carries the signed bundle as the syncer received it (binaryData, not
unpacked files), and each replica verifies the signature, the cluster group and the revision counter itself
before use (admission/follow.py). Whoever can write the ConfigMap can at most withhold a newer bundle, never
put in one the signer did not sign, nor an older one than a replica enforces.

Limit: the API server refuses an object over 1 MiB (etcd's request limit, ~1.5 MiB, minus the rest). A bundle
that does not fit is refused here with the reason, never cut: the webhook then keeps the set it has and the
syncer reports the refusal (a cut bundle would not verify anyway; an uncut refusal says why).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from edgetrust.bundles.errors import BundleFormatError

CONFIGMAP = "edgetrust-admission-bundle"
KEY = "bundle.tar.gz"
#: the bundle's revision, for people (`kubectl get cm -o yaml`); never read for a decision
REVISION_ANNOTATION = "edgetrust.io/bundle-revision"
#: the bundle's bytes in the ConfigMap at most: the API server's 1 MiB object limit, less room for metadata and
#: managedFields; base64 (binaryData) makes that 4/3 of the bundle on the wire
MAX_HANDOFF_BYTES = 768 * 1024


class HandoffTooLargeError(BundleFormatError):
    code = "handoff_too_large"


def configmap(blob: bytes, *, namespace: str, revision: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The ConfigMap that carries `blob` (a signed bundle, as accepted) to the webhook replicas."""
    if len(blob) > MAX_HANDOFF_BYTES:
        raise HandoffTooLargeError(
            f"bundle {revision} is {len(blob)} bytes, over the {MAX_HANDOFF_BYTES} bytes a ConfigMap carries to "
            "the webhook (the API server's 1 MiB object limit): not handed over; the webhook keeps its set. "
            "Split the policy set or drop unused Gatekeeper templates"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {REVISION_ANNOTATION: revision},
        },
        "binaryData": {KEY: base64.b64encode(blob).decode()},
    }


def bundle_bytes(obj: Mapping[str, Any]) -> bytes:
    """The bundle a handoff ConfigMap carries, still unverified; a ConfigMap without one, or over the limit,
    is refused (never half read)."""
    found = binary_item(obj, KEY, configmap=CONFIGMAP)
    if found is None:
        raise BundleFormatError(f"ConfigMap {CONFIGMAP} has no binaryData {KEY}")
    return found


def binary_item(obj: Mapping[str, Any], key: str, *, configmap: str) -> bytes | None:
    """One blob of a handoff ConfigMap's binaryData, still unverified (None: not there); a value that is not
    base64 text, or over the limit, is refused (never half read). Every handoff ConfigMap reads through here."""
    data = obj.get("binaryData")
    encoded = data.get(key) if isinstance(data, Mapping) else None
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise BundleFormatError(f"ConfigMap {configmap}: {key} is not a string")
    if len(encoded) > (MAX_HANDOFF_BYTES * 4) // 3 + 4:
        raise HandoffTooLargeError(f"ConfigMap {configmap}: {key} is over {MAX_HANDOFF_BYTES} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleFormatError(f"ConfigMap {configmap}: {key} is not base64: {exc}") from exc
