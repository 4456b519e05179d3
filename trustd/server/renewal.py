"""A node renews its SVID with fresh evidence: over mTLS with the SVID it holds, plus a quote by the AK it
enrolled with, over a nonce the hub just made. An SVID alone is not enough, since a stolen key would renew
forever; a node that booted something else since is refused, naming what no longer matches.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from attestation.errors import AttestationError
from attestation.refvalues import ReferencePolicy
from attestation.tpm2.public import parse_public
from edgetrust.protocol import RenewChallenge, RenewRequest, RenewResponse, b64, b64decode_field
from edgetrust.spiffe.id import SpiffeId
from trustd.errors import TrustdError
from trustd.server.ca import SpiffeCA
from trustd.server.enrollment import MAX_PENDING_PER_EK, judge_evidence
from trustd.server.refusals import RefusalAudit
from trustd.server.revocations import Revocations
from trustd.server.store import AuditEvent, ChallengeRecord, DeviceRecord, Store, SvidRecord

log = logging.getLogger(__name__)
NONCE_BYTES = 32


class RenewalError(TrustdError):
    code = "renewal_refused"


class RenewalService:
    def __init__(
        self,
        *,
        store: Store,
        ca: SpiffeCA,
        reference_policy: ReferencePolicy,
        revocations: Revocations,
        svid_ttl: timedelta,
        challenge_ttl: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ca = ca
        self._reference = reference_policy
        self._revocations = revocations
        self._svid_ttl = svid_ttl
        self._challenge_ttl = challenge_ttl
        self._clock = clock
        self._refusals = RefusalAudit(store)

    def close(self) -> None:
        self._refusals.flush()

    def _device(self, spiffe_id: str) -> DeviceRecord:
        device = self._store.device_by_spiffe_id(spiffe_id)
        if device is None:
            raise RenewalError(f"{spiffe_id} is not an enrolled node")
        if device.status != "enrolled" or self._revocations.is_revoked(spiffe_id):
            raise RenewalError(f"{spiffe_id} is revoked: it may not renew")
        return device

    def begin(self, spiffe_id: str) -> RenewChallenge:
        now = self._clock()
        try:
            device = self._device(spiffe_id)
            challenge = ChallengeRecord(
                id=secrets.token_urlsafe(24),
                ek_fingerprint=device.ek_fingerprint,
                ak_public=b"",
                nonce=secrets.token_bytes(NONCE_BYTES),
                secret_digest=b"",
                claims={"purpose": "renew", "spiffe_id": spiffe_id},
                created_at=now,
                expires_at=now + self._challenge_ttl.total_seconds(),
                purpose="renew",
            )
            self._store.put_challenge(challenge, keep_per_ek=MAX_PENDING_PER_EK)
            selection = self._reference.device_class(device.device_class).selection()
        except (AttestationError, TrustdError) as exc:
            self._refused(spiffe_id, exc, now)
            raise
        return RenewChallenge(
            challenge_id=challenge.id,
            nonce=b64(challenge.nonce),
            pcr_selection={bank.label: list(pcrs) for bank, pcrs in selection.items()},
            expires_at=challenge.expires_at,
        )

    def complete(self, spiffe_id: str, request: RenewRequest) -> RenewResponse:
        now = self._clock()
        try:
            challenge = self._store.consume_challenge(request.challenge_id, now=now)  # once, whatever follows
            if challenge.claims.get("purpose") != "renew" or challenge.claims.get("spiffe_id") != spiffe_id:
                raise RenewalError("this challenge was not made for this node's renewal")
            device = self._device(spiffe_id)
            ak = parse_public(b64decode_field(request.ak_public, field="ak_public"))
            if ak.name.hex() != device.ak_name:
                raise RenewalError("the quote is not by the AK this node enrolled with")
            class_policy = self._reference.device_class(device.device_class)
            judge_evidence(request, ak=ak, nonce=challenge.nonce, class_policy=class_policy)
            svid = self._ca.issue_x509_svid(
                request.csr.encode(),
                SpiffeId.parse(spiffe_id),
                ttl=self._svid_ttl,
                now=datetime.fromtimestamp(now, UTC),
            )
            self._store.record_svid(
                SvidRecord(
                    serial=f"{svid.serial:x}",
                    spiffe_id=spiffe_id,
                    ek_fingerprint=device.ek_fingerprint,
                    not_before=svid.certificate.not_valid_before_utc.timestamp(),
                    not_after=svid.not_after.timestamp(),
                ),
                AuditEvent(now, "agent.renew", "renewed", spiffe_id, {"serial": f"{svid.serial:x}"}),
                attested_at=now,  # judge_evidence verified a fresh quote: the node's last attestation
            )
        except (AttestationError, TrustdError) as exc:
            self._refused(spiffe_id, exc, now)
            raise
        log.info("renewed %s", spiffe_id)
        return RenewResponse(
            spiffe_id=spiffe_id,
            svid_chain=svid.chain_pem().decode(),
            bundle=self._ca.x509_authorities_pem().decode(),
            not_after=svid.not_after.timestamp(),
        )

    def _refused(self, subject: str, exc: AttestationError | TrustdError, now: float) -> None:
        # the caller is authenticated (mTLS): its SPIFFE ID is the source the refusals are counted under
        first = self._refusals.record(
            event="agent.renew", subject=subject, code=exc.code, reason=exc.diagnostics(), source=subject, now=now
        )
        log.log(
            logging.WARNING if first else logging.DEBUG, "agent.renew refused for %s: %s", subject, exc.diagnostics()
        )
