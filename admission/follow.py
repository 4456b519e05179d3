"""The webhook follows the bundles the syncer accepts: it reads the handoff ConfigMap through the API server,
verifies what it finds itself, and swaps the policy set in (admission/swap.py) when it is newer.

The ConfigMap is not trusted (edgetrust/bundles/handoff.py): each replica checks the signature against its own
bundle keys, the cluster group, and that the revision counter is above the one it enforces; anything else is
refused, counted and shown in /readyz, and the set in force stays. A replica that cannot reach the API server
(a partition) keeps its last verified set: nothing here ever empties it.

Reading, not watching: one GET of one small object per interval per replica. A watch would bring a bundle a
few seconds sooner; a GET needs no watch bookkeeping (resourceVersion expiry, bookmarks, a stream bounded by
line) and a lost change is impossible, since each read sees the newest object. The resourceVersion is kept, so
an unchanged ConfigMap costs no verification.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from admission.controller import AdmissionController
from admission.errors import AdmissionError, ConfigError, PolicySwapError
from admission.policy import DEFAULT_EXEMPT_NAMESPACES, PolicySet
from edgetrust._internal import kube as kubeapi
from edgetrust.bundles import handoff
from edgetrust.bundles.errors import BundleError
from edgetrust.bundles.format import unpack
from edgetrust.bundles.signing import verify_bundle

log = logging.getLogger("edgetrust.admission")


class HandoffError(AdmissionError):
    """The handoff ConfigMap could not be read, or what it holds is refused; the set in force stays."""

    code = "handoff_refused"


@dataclass(frozen=True, slots=True)
class VerifiedPolicies:
    """A policy set from a bundle whose signature, group and files were checked: the only thing swapped in."""

    policies: PolicySet
    revision: str
    counter: int


class ConfigMapReader:
    """One ConfigMap read through the API server, by GET (see the module doc for why not a watch); shared by
    every follower of a handoff ConfigMap (bundles here, node attestation in admission/nodegate.py)."""

    def __init__(self, kube: kubeapi.KubeConnection, namespace: str, name: str) -> None:
        self._kube = kube
        self.name = name
        self._path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        #: resourceVersion last handed out (acted on, or refused: the same object is not judged twice)
        self.seen = ""

    async def read(self) -> tuple[str, Mapping[str, Any] | None]:
        """("absent", None), ("unchanged", None), or ("changed", the object); HandoffError when unreadable."""
        try:
            obj = await self._kube.request("GET", self._path, what=f"ConfigMap {self.name}")
        except kubeapi.KubeStatusError as exc:
            if exc.status == 404:
                return "absent", None
            raise HandoffError(str(exc)) from exc
        except kubeapi.KubeAccessError as exc:
            raise HandoffError(f"{exc} (what is held stays)") from exc
        metadata = obj.get("metadata")
        version = str(metadata.get("resourceVersion", "")) if isinstance(metadata, dict) else ""
        if version and version == self.seen:
            return "unchanged", None
        self.seen = version
        return "changed", obj

    async def aclose(self) -> None:
        await self._kube.aclose()


class ConfigMapFollower:
    """One ConfigMap read every `interval_s` by a task of its own, acted on by `check_once` (the subclass). Written
    once for the bundle follower and the node gate: a refusal or an outage is logged and what is held stays; the
    task never dies of one (a follower that stopped would leave the replica on old policy without a word)."""

    def __init__(self, reader: ConfigMapReader, interval_s: float, task_name: str) -> None:
        self._reader = reader
        self._interval_s = interval_s
        self._task_name = task_name
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except AdmissionError as exc:
                log.warning("%s", exc.diagnostics())
            except Exception:  # a foreign error: logged, and the next round reads again
                log.exception("%s: reading ConfigMap %s failed; again in %.0f s", self._task_name, self._reader.name,
                              self._interval_s)  # fmt: skip

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._reader.aclose()


class BundleFollower(ConfigMapFollower):
    def __init__(
        self,
        controller: AdmissionController,
        kube: kubeapi.KubeConnection,
        *,
        namespace: str,
        keys: Mapping[str, ec.EllipticCurvePublicKey],
        group: str,
        interval_s: float = 5.0,
        exempt_namespaces: Sequence[str] = DEFAULT_EXEMPT_NAMESPACES,
        parameters: Path | None = None,
    ) -> None:
        if not keys:
            raise ConfigError("following the syncer's bundles needs the bundle keys (bundle_keys)")
        if not group:
            raise ConfigError("following the syncer's bundles needs the cluster group (bundle_group)")
        super().__init__(ConfigMapReader(kube, namespace, handoff.CONFIGMAP), interval_s, "admission-bundle-follower")
        self._controller = controller
        self._keys = dict(keys)
        self._group = group
        self._exempt = tuple(exempt_namespaces)
        self._parameters = parameters

    async def check_once(self) -> str:
        """Read the ConfigMap once and act: "absent", "unchanged", "swapped", or raise HandoffError (refused or
        unreadable; the set in force stays and the refusal is recorded for /readyz)."""
        state, obj = await self._reader.read()
        if obj is None:
            return state
        version = self._reader.seen
        signed: list[str] = []  # the bundle's revision, once its signature verified
        try:
            verified = self.verify(handoff.bundle_bytes(obj), signed)
        except (BundleError, AdmissionError) as exc:  # unsigned, tampered, another group's, a policy that fails
            why = f"{exc.code}: {exc.diagnostics()}"
            # a signed bundle that fails is named as the hub's rollout knows it; anything else by the object
            self._controller.record_refusal(signed[0] if signed else f"ConfigMap {handoff.CONFIGMAP} v{version}", why)
            raise HandoffError(f"ConfigMap {handoff.CONFIGMAP} refused (the set in force stays): {why}") from exc
        if verified.counter == self._controller.status.counter:
            return "unchanged"  # the bundle in force, handed over again (a syncer restart)
        try:
            await self._controller.swap(verified.policies, counter=verified.counter, bundle_revision=verified.revision)
        except PolicySwapError as exc:
            raise HandoffError(str(exc)) from exc
        log.info("admission policies now from bundle %s (counter %d)", verified.revision, verified.counter)
        return "swapped"

    def verify(self, blob: bytes, signed: list[str] | None = None) -> VerifiedPolicies:
        """Parse, verify (signature, group), then load: raw bytes never go past here. `signed` receives the
        bundle's revision once its signature verified and its group is ours (so a refusal after that can name it)."""
        bundle = unpack(blob)
        signer = verify_bundle(bundle, self._keys)
        if bundle.group != self._group:
            raise HandoffError(
                f"bundle {bundle.revision} is signed for cluster group {bundle.group!r}, this cluster is "
                f"{self._group!r}: refused (another group's bundle in our ConfigMap)"
            )
        if signed is not None:
            signed.append(bundle.revision)
        work = Path(tempfile.mkdtemp(prefix="edgetrust-handoff-"))
        try:
            policies = PolicySet.load(
                bundle.extract("admission", work / "admission"),
                exempt_namespaces=self._exempt,
                gatekeeper_dir=bundle.extract("gatekeeper", work / "gatekeeper"),
                parameters=self._parameters,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)  # PolicySet holds the sources; nothing reads the files after
        log.debug("bundle %s from the handoff ConfigMap verified (key %s)", bundle.revision, signer)
        return VerifiedPolicies(policies, bundle.revision, bundle.counter)
