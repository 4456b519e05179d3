"""Decide whether one image satisfies one image-signature policy, from the registry or from memory.

Order: parse the reference; pin it to a digest (the reference's own digest, a young tag resolution, or the
registry); answer from the verdict cache if this digest passed this policy revision before; otherwise verify
(cosign keys, then Sigstore identities: either is enough) and remember the verdict. When the registry cannot be
reached, a remembered verdict still admits, marked `offline` so the answer can say so; anything else raises.

This is the boundary of the verification path: whatever it raises is an AdmissionError. An exception from the
libraries below that slipped past their own conversion is turned into a signature failure here (fail closed),
so a hostile registry or bundle gets a refusal, never an HTTP 500.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from admission.errors import AdmissionError, RegistryUnreachableError, SignatureError
from admission.imageref import ImageReference, parse_image_reference
from admission.images.cache import TTLCache
from admission.images.cosign import verify_cosign
from admission.images.keyless import verify_keyless
from admission.metrics import AdmissionMetrics
from admission.policy import ImagePolicy
from admission.registry import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    reference: ImageReference
    digest: str
    policy: str
    signer: str
    from_cache: bool = False
    offline: bool = False


@dataclass(frozen=True, slots=True)
class CacheSettings:
    verdict_ttl_s: float = 3600.0
    tag_ttl_s: float = 60.0
    max_entries: int = 10_000


class ImageVerifier:
    def __init__(
        self, registry: RegistryClient, metrics: AdmissionMetrics, settings: CacheSettings | None = None
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._settings = settings or CacheSettings()
        self._verdicts: TTLCache[tuple[str, str, str], str] = TTLCache(
            max_entries=self._settings.max_entries, ttl_s=self._settings.verdict_ttl_s
        )
        self._tags: TTLCache[tuple[str, str], str] = TTLCache(
            max_entries=self._settings.max_entries, ttl_s=self._settings.verdict_ttl_s
        )
        self._inflight: dict[tuple[str, str, str], asyncio.Future[str]] = {}

    async def close(self) -> None:
        await self._registry.aclose()

    def forget(self) -> None:
        self._verdicts.clear()
        self._tags.clear()

    async def verify(self, text: str, policy: ImagePolicy) -> VerifiedImage:
        try:
            return await self._verify(text, policy)
        except AdmissionError:
            raise
        except Exception as exc:  # the boundary: see the module docstring
            log.exception("image %s under policy %s: verification raised %s", text, policy.name, type(exc).__name__)
            raise SignatureError(f"{text}: verification failed ({type(exc).__name__}); refused") from exc

    def remembered_signer(self, digest: str, policy: ImagePolicy) -> str | None:
        """Who the verdict cache says signed `digest` for this policy revision (None: not verified, or expired)."""
        entry = self._verdicts.get((digest, policy.name, policy.revision))
        return entry.value if entry is not None else None

    async def _verify(self, text: str, policy: ImagePolicy) -> VerifiedImage:
        reference = parse_image_reference(text)
        digest, offline = await self._pin(reference)
        key = (digest, policy.name, policy.revision)
        cached = self._verdicts.get(key)
        if cached is not None:
            self._metrics.cache_hits.inc()
            if offline:
                self._metrics.offline_admits.inc()
            return VerifiedImage(reference, digest, policy.name, cached.value, from_cache=True, offline=offline)
        self._metrics.cache_misses.inc()
        if offline:
            raise RegistryUnreachableError(f"{reference.registry} is unreachable and {reference} was never verified")
        # Single flight: a rollout sends the same new image in many reviews at once; verify it once.
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._verify_and_remember(reference, digest, policy, key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        signer = await asyncio.shield(pending)
        return VerifiedImage(reference, digest, policy.name, signer)

    async def _verify_and_remember(
        self, reference: ImageReference, digest: str, policy: ImagePolicy, key: tuple[str, str, str]
    ) -> str:
        try:
            signer = await self._verify_uncached(reference, digest, policy)
        except AdmissionError as exc:
            if exc.code.startswith(("registry", "blob", "manifest")):
                self._metrics.registry_errors.labels(exc.code).inc()
            raise
        log.info("verified %s@%s under policy %s: signed by %s", reference.name, digest, policy.name, signer)
        self._verdicts.put(key, signer)
        return signer

    async def _pin(self, reference: ImageReference) -> tuple[str, bool]:
        if reference.digest:
            return reference.digest, False
        key = (reference.name, reference.tag or "latest")
        young = self._tags.get(key, max_age=self._settings.tag_ttl_s)
        if young is not None:
            return young.value, False
        try:
            manifest = await self._registry.resolve(reference)
        except RegistryUnreachableError:
            self._metrics.registry_errors.labels("registry_unreachable").inc()
            last_known = self._tags.get(key)
            if last_known is None:
                raise
            return last_known.value, True
        except AdmissionError as exc:
            self._metrics.registry_errors.labels(exc.code).inc()
            raise
        self._tags.put(key, manifest.digest)
        return manifest.digest, False

    async def _verify_uncached(self, reference: ImageReference, digest: str, policy: ImagePolicy) -> str:
        failures: list[AdmissionError] = []
        if policy.keys:
            try:
                signature = await verify_cosign(self._registry, reference, digest, policy.keys)
                return f"key {signature.key}"
            except SignatureError as exc:
                failures.append(exc)
        if policy.identities and policy.trusted_root is not None:
            try:
                keyless = await verify_keyless(
                    self._registry, reference, digest, policy.trusted_root, policy.identities
                )
                return f"{keyless.identity} ({keyless.issuer})"
            except SignatureError as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        raise SignatureError("; ".join(str(f) for f in failures))
