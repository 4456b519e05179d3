"""Enrollment: TPM evidence in, an X.509-SVID out, in two round trips.

Round 1 (`begin`): the device presents its EK certificate, EK and AK public areas. We check the EK chain and
the AK's attributes, then seal a fresh secret to the EK for the AK's Name (MakeCredential) and pick a nonce.
Round 2 (`complete`): the device returns the secret (only the TPM holding both EK and AK could recover it),
a quote over the PCRs its device class names, carrying our nonce, and a CSR. We verify the quote, compare
the PCRs (and the replayed event log) with the operator's reference values and only then sign the CSR.

Any refusal raises `AttestationError` or `TrustdError`, is audited (aggregated per kind, source and minute, see
`trustd.server.refusals`), and records nothing as enrolled. Round 1 needs no proof of possession (EK certificates
are public), so what it stores is bounded: claims by size, challenges per EK by count, expired ones purged.
The service is synchronous and free of HTTP so that tests, benchmarks and the API share it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from attestation.credential import make_credential
from attestation.ek import EKVerifier, ek_fingerprint
from attestation.errors import AttestationError, CredentialActivationError, MalformedStructureError
from attestation.eventlog import EventLog, parse_event_log
from attestation.quote import ak_signs_with_sha1, check_ak_attributes, check_ak_scheme, scheme_label, verify_quote
from attestation.refvalues import DeviceClassPolicy, ReferencePolicy
from attestation.tpm2.constants import HashAlg
from attestation.tpm2.public import TpmPublic, parse_public
from edgetrust.protocol import ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, b64, b64decode_field
from edgetrust.spiffe.id import SpiffeId, render_spiffe_id
from trustd.errors import ChallengeError, ClaimsTooLargeError, EnrollmentError, TrustdError
from trustd.server.ca import SpiffeCA
from trustd.server.refusals import RefusalAudit
from trustd.server.store import AuditEvent, ChallengeRecord, DeviceRecord, Store, SvidRecord

log = logging.getLogger(__name__)

#: the secret sealed to the EK; 32 bytes fits every EK nameAlg from SHA-256 up
SECRET_BYTES = 32
NONCE_BYTES = 32
#: PCR digests are at most SHA-512 sized; anything longer is not a PCR value
_MAX_PCR_HEX = 128
#: claims name a node (site, node, rack...): a key is an identifier, a value a short name; both are stored
MAX_CLAIM_KEY = 64
MAX_CLAIM_VALUE = 256
#: pending challenges kept per EK: a device needs one; round 1 replayed with its public EK certificate
#: replaces the oldest instead of growing the store
MAX_PENDING_PER_EK = 4
#: expired challenges are purged at most this often (one DELETE, not one per request)
PURGE_INTERVAL_S = 30.0


@dataclass(frozen=True, slots=True)
class EnrollmentPolicy:
    """How identities are named and how long they live: the operator's choices, not the device's."""

    spiffe_id_template: str
    svid_ttl: timedelta
    jwt_svid_ttl: timedelta
    challenge_ttl: timedelta


class EnrollmentService:
    def __init__(
        self,
        *,
        ek_verifier: EKVerifier,
        reference_policy: ReferencePolicy,
        ca: SpiffeCA,
        store: Store,
        policy: EnrollmentPolicy,
        clock: Callable[[], float] = time.time,
        refusals: RefusalAudit | None = None,
    ) -> None:
        self._ek_verifier = ek_verifier
        self._reference = reference_policy
        self._ca = ca
        self._store = store
        self._policy = policy
        self._clock = clock
        self._refusals = refusals or RefusalAudit(store)
        self._next_purge = 0.0

    # -- upkeep ----------------------------------------------------------------------------------------------
    @property
    def upkeep_interval_s(self) -> float:
        """How often `maintain` should run: expired challenges live at most one more challenge TTL (or 30 s)."""
        return min(PURGE_INTERVAL_S, self._policy.challenge_ttl.total_seconds())

    def maintain(self, now: float | None = None) -> None:
        """Purge expired challenges and write pending refusal counts: run periodically by the server."""
        now = self._clock() if now is None else now
        self._next_purge = now + self.upkeep_interval_s
        self._store.purge_challenges(now=now)
        self._refusals.flush()

    def close(self) -> None:
        self._refusals.flush()

    # -- round 1 ---------------------------------------------------------------------------------------------
    def begin(self, request: ChallengeRequest, *, source: str = "") -> ChallengeResponse:
        now = self._clock()
        if now >= self._next_purge:
            self.maintain(now)
        subject = "unknown-ek"
        try:
            _check_claims(request.claims)
            ek_public = parse_public(b64decode_field(request.ek_public, field="ek_public"))
            subject = ek_fingerprint(ek_public)
            verified_ek = self._ek_verifier.verify(
                ek_certificate=b64decode_field(request.ek_certificate, field="ek_certificate"),
                ek_public=ek_public,
                intermediates=[b64decode_field(c, field="ek_intermediates") for c in request.ek_intermediates],
                now=datetime.fromtimestamp(now, UTC),
            )
            ak_bytes = b64decode_field(request.ak_public, field="ak_public")
            ak_public = parse_public(ak_bytes)
            check_ak_attributes(ak_public)
            class_policy = self._reference.device_class(request.device_class)
            check_ak_scheme(ak_public, allow_sha1=class_policy.allow_sha1_quotes)
            # Fail early on a name we would refuse later, before the device spends a quote on it.
            self._spiffe_id(request.claims, request.device_class, verified_ek.fingerprint)

            secret = secrets.token_bytes(SECRET_BYTES)
            nonce = secrets.token_bytes(NONCE_BYTES)
            credential = make_credential(verified_ek.public, secret, ak_public.name)
            challenge = ChallengeRecord(
                id=secrets.token_urlsafe(24),
                ek_fingerprint=verified_ek.fingerprint,
                ak_public=ak_bytes,
                nonce=nonce,
                secret_digest=hashlib.sha256(secret).digest(),
                claims={**request.claims, "device_class": request.device_class},
                created_at=now,
                expires_at=now + self._policy.challenge_ttl.total_seconds(),
            )
            self._store.put_challenge(challenge, keep_per_ek=MAX_PENDING_PER_EK)
        except (AttestationError, TrustdError) as exc:
            self._refused("enroll.challenge", subject, exc, now, source)
            raise
        return ChallengeResponse(
            challenge_id=challenge.id,
            credential_blob=b64(credential.blob),
            encrypted_secret=b64(credential.encrypted_secret),
            nonce=b64(nonce),
            pcr_selection={bank.label: list(pcrs) for bank, pcrs in class_policy.selection().items()},
            expires_at=challenge.expires_at,
        )

    @property
    def reference_policy(self) -> ReferencePolicy:
        return self._reference

    @property
    def policy(self) -> EnrollmentPolicy:
        return self._policy

    # -- round 2 ---------------------------------------------------------------------------------------------
    def complete(self, request: EnrollRequest, *, source: str = "") -> EnrollResponse:
        now = self._clock()
        subject = "unknown-challenge"
        try:
            # Consumed first, whatever follows: a challenge answers once, right or wrong.
            challenge = self._store.consume_challenge(request.challenge_id, now=now)
            subject = challenge.ek_fingerprint
            if challenge.purpose != "enroll":
                raise ChallengeError("this challenge was made for a renewal, not for enrollment")
            activated = b64decode_field(request.activated_secret, field="activated_secret")
            if not hmac.compare_digest(hashlib.sha256(activated).digest(), challenge.secret_digest):
                raise CredentialActivationError(
                    "the device did not return the secret sealed to its EK: its AK is not in the same TPM as "
                    "the EK whose certificate it presented"
                )
            ak_public = parse_public(challenge.ak_public)
            claims = dict(challenge.claims)
            device_class = claims.pop("device_class")
            class_policy = self._reference.device_class(device_class)
            judge_evidence(request, ak=ak_public, nonce=challenge.nonce, class_policy=class_policy)
            detail = {"ek": challenge.ek_fingerprint, "class": device_class, "ak_scheme": scheme_label(ak_public)}
            sha1_used = [
                what
                for what, used in (
                    ("the AK signs with SHA-1", ak_signs_with_sha1(ak_public)),
                    ("the PCR bank is sha1", class_policy.bank == HashAlg.SHA1),
                )
                if used
            ]
            if sha1_used:  # the operator's opt-in, on the record for every device that used it
                detail["sha1_quotes"] = "allowed by the device class (allow_sha1_quotes): " + ", ".join(sha1_used)

            spiffe_id = self._spiffe_id(claims, device_class, challenge.ek_fingerprint)
            known = self._store.device(challenge.ek_fingerprint)
            if known is not None and known.status == "revoked":
                raise EnrollmentError(f"this TPM's device ({known.spiffe_id}) was revoked; it may not enroll again")
            if self._store.revocation(str(spiffe_id)) is not None:
                raise EnrollmentError(f"{spiffe_id} was revoked; enroll this device under another name")
            if known is not None and known.spiffe_id != str(spiffe_id):
                raise EnrollmentError(
                    f"this TPM is already enrolled as {known.spiffe_id}; revoke it before enrolling it as {spiffe_id}"
                )
            svid = self._ca.issue_x509_svid(
                request.csr.encode(),
                spiffe_id,
                ttl=self._policy.svid_ttl,
                now=datetime.fromtimestamp(now, UTC),
            )
            jwt_svids = {
                audience: self._ca.issue_jwt_svid(spiffe_id, audience=[audience], ttl=self._policy.jwt_svid_ttl)
                for audience in request.jwt_audiences
            }
            self._store.record_enrollment(
                DeviceRecord(
                    ek_fingerprint=challenge.ek_fingerprint,
                    spiffe_id=str(spiffe_id),
                    device_class=device_class,
                    claims=claims,
                    ak_name=ak_public.name.hex(),
                    enrolled_at=now,
                    attested_at=now,  # the enrollment's quote verified just now
                ),
                SvidRecord(
                    serial=f"{svid.serial:x}",
                    spiffe_id=str(spiffe_id),
                    ek_fingerprint=challenge.ek_fingerprint,
                    not_before=svid.certificate.not_valid_before_utc.timestamp(),
                    not_after=svid.not_after.timestamp(),
                ),
                AuditEvent(
                    at=now,
                    event="enroll.complete",
                    outcome="enrolled",
                    subject=str(spiffe_id),
                    detail={**detail, "serial": f"{svid.serial:x}"},
                ),
            )
        except (AttestationError, TrustdError) as exc:
            self._refused("enroll.complete", subject, exc, now, source)
            raise
        log.info("enrolled %s (EK %s…, class %s)", spiffe_id, challenge.ek_fingerprint[:16], device_class)
        return EnrollResponse(
            spiffe_id=str(spiffe_id),
            svid_chain=svid.chain_pem().decode(),
            bundle=self._ca.x509_authorities_pem().decode(),
            not_after=svid.not_after.timestamp(),
            jwt_svids=jwt_svids,
        )

    # -- helpers ---------------------------------------------------------------------------------------------
    def _spiffe_id(self, claims: dict[str, str], device_class: str, fingerprint: str) -> SpiffeId:
        fields = {**claims, "device_class": device_class, "ek": fingerprint[:16]}
        try:
            return render_spiffe_id(self._policy.spiffe_id_template, self._ca.trust_domain, **fields)
        except KeyError as exc:
            raise EnrollmentError(
                f"the naming template {self._policy.spiffe_id_template!r} needs the claim {exc.args[0]!r}; "
                f"the device sent {sorted(claims)} (trustctl enroll --claim {exc.args[0]}=...)"
            ) from exc

    def _refused(self, event: str, subject: str, exc: AttestationError | TrustdError, now: float, source: str) -> None:
        first = self._refusals.record(
            event=event, subject=subject, code=exc.code, reason=str(exc), source=source, now=now
        )
        # one line per kind, source and minute, like the audit: a flood of garbage must not flood the log either
        log.log(logging.WARNING if first else logging.DEBUG, "%s refused for %s: %s", event, subject[:16], exc)


def _check_claims(claims: dict[str, str]) -> None:
    """Refuse (never truncate) claims over the sizes the hub stores, naming the limit."""
    for key, value in claims.items():
        if len(key) > MAX_CLAIM_KEY:
            raise ClaimsTooLargeError(
                f"claim name {key[:32]!r}… has {len(key)} characters; claim names are limited to {MAX_CLAIM_KEY}"
            )
        if len(value) > MAX_CLAIM_VALUE:
            raise ClaimsTooLargeError(
                f"claim {key!r} has {len(value)} characters; claim values are limited to {MAX_CLAIM_VALUE}"
            )


class QuoteEvidence(Protocol):
    """What a device sends to prove its boot, at enrollment and at every renewal (EnrollRequest, RenewRequest)."""

    attest: str
    signature: str
    pcr_values: dict[str, dict[int, str]]
    event_log: str | None


def judge_evidence(evidence: QuoteEvidence, *, ak: TpmPublic, nonce: bytes, class_policy: DeviceClassPolicy) -> None:
    """The one judgement of a device's boot, for enrollment and renewal alike: the quote by `ak` over the hub's
    `nonce` and the PCR values sent, the event log (when sent) replayed against them, then the device class's
    reference values. Raises the AttestationError of the first check that fails."""
    quote = verify_quote(
        ak=ak,
        attest=b64decode_field(evidence.attest, field="attest"),
        signature=b64decode_field(evidence.signature, field="signature"),
        nonce=nonce,
        pcr_values=parse_pcr_values(evidence.pcr_values),
        allow_sha1=class_policy.allow_sha1_quotes,
    )
    event_log: EventLog | None = None
    if evidence.event_log is not None:
        event_log = parse_event_log(b64decode_field(evidence.event_log, field="event_log"))
    class_policy.check(quote, event_log)


def parse_pcr_values(raw: dict[str, dict[int, str]]) -> dict[HashAlg, dict[int, bytes]]:
    values: dict[HashAlg, dict[int, bytes]] = {}
    for label, pcrs in raw.items():
        bank = HashAlg.from_label(label)
        decoded: dict[int, bytes] = {}
        for index, value in pcrs.items():
            if not 0 <= index < 24 or len(value) > _MAX_PCR_HEX:
                raise MalformedStructureError(f"PCR {label}:{index} is out of range or too long")
            try:
                decoded[index] = bytes.fromhex(value)
            except ValueError as exc:
                raise MalformedStructureError(f"PCR {label}:{index} is not hex: {value[:20]!r}") from exc
        values[bank] = decoded
    return values
