"""The device side of attestation: the only code that talks to a TPM, through tpm2-pytss (tpm2-tss ESAPI).

It produces evidence and never judges it; everything it returns is plain bytes in TPM wire format, which the
hub parses and verifies with `attestation.quote`, `attestation.ek` and `attestation.credential`.

Handles: with no resource manager (swtpm over TCP) transient objects outlive a connection and a full TPM
refuses new ones, so a session starts by flushing stale transient handles (opt-out for shared TPMs behind
/dev/tpmrm0) and `close()` flushes every handle it created.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from attestation.errors import CredentialActivationError, TPMDeviceError
from attestation.tpm2.constants import HashAlg

try:  # tpm2-pytss is a device-only dependency (the `device` extra); the hub never imports this module
    from tpm2_pytss import ESAPI, TPM2B_PUBLIC, TPMT_SYM_DEF, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HT, TPM2_SE, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPM2B_PRIVATE
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template
except ImportError as exc:  # pragma: no cover - exercised only on machines without the extra
    raise TPMDeviceError(
        "tpm2-pytss is not installed; install the device extra: pip install 'edgetrust[device]' "
        "(it compiles against libtss2-dev: apt-get install libtss2-dev)"
    ) from exc

EKKind = Literal["rsa", "ecc"]
#: "rsa-sha1" and "ecc-sha1" are what legacy vTPMs make: the hub refuses them unless the device class opts in
AKKind = Literal["ecc", "rsa", "rsapss", "rsa-sha1", "ecc-sha1"]

#: TCG EK Credential Profile templates, in order of preference; the first with a certificate in NV wins
_EK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "rsa": ("EK-RSA2048", "EK-HIGH-RSA2048"),
    "ecc": ("EK-ECC256", "EK-HIGH-ECC256", "EK-HIGH-ECC384"),
}
_AK_TEMPLATES: dict[str, str] = {
    "ecc": "ecc256:ecdsa-sha256:null",
    "rsa": "rsa2048:rsassa-sha256:null",
    "rsapss": "rsa2048:rsapss-sha256:null",
    "rsa-sha1": "rsa2048:rsassa-sha1:null",
    "ecc-sha1": "ecc256:ecdsa-sha1:null",
}
_AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
#: TPM2_PCR_Read answers at most 8 digests per call (TPML_DIGEST limit)
_PCR_READ_BATCH = 8
#: the NV index range (TPM_HT_NV_INDEX) and how many handles one GetCapability answer may list
_NV_INDEX_FIRST = 0x01000000
_NV_HANDLES_PER_CALL = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndorsementKey:
    public: bytes  # marshalled TPMT_PUBLIC
    certificate: bytes | None  # DER, as provisioned in NV by the manufacturer


@dataclass(frozen=True, slots=True)
class AttestationKey:
    public: bytes  # marshalled TPMT_PUBLIC
    name: bytes  # the TPM's Name for it
    #: TPM2B_PRIVATE and TPM2B_PUBLIC as the TPM returned them: the private part is wrapped by this TPM's storage
    #: key, useless elsewhere; kept by the device so it can quote with the same AK at renewal
    private_blob: bytes = b""
    public_blob: bytes = b""


@dataclass(frozen=True, slots=True)
class QuoteEvidence:
    attest: bytes  # TPMS_ATTEST, as signed
    signature: bytes  # TPMT_SIGNATURE
    pcr_values: Mapping[HashAlg, Mapping[int, bytes]]


def selection_string(selection: Mapping[HashAlg, Sequence[int]]) -> str:
    """tpm2-pytss's compact selection syntax, e.g. 'sha256:0,1,7+sha1:0'."""
    parts = [f"{bank.label}:{','.join(str(i) for i in sorted(set(pcrs)))}" for bank, pcrs in selection.items() if pcrs]
    if not parts:
        raise TPMDeviceError("empty PCR selection: the hub asked for no PCRs")
    return "+".join(parts)


def _tss(action: str, exc: Exception) -> TPMDeviceError:
    return TPMDeviceError(f"TPM {action} failed: {exc}")


def _quiet_tss2() -> None:
    """tss2 logs to stderr by itself (WARNING and up, from every module: the TCTI, ESYS), with the level read
    from TSS2_LOG once, at its first line. On a command line that is noise around the one line saying what
    failed, and every failure reaches the caller anyway, as TPMDeviceError carrying tss2's error code. So it is
    silenced, unless the user set TSS2_LOG or this process logs DEBUG (`-v`): then tss2 says everything again.
    Called before the first ESYS context exists, so tss2 has not read the variable yet."""
    if "TSS2_LOG" not in os.environ and not log.isEnabledFor(logging.DEBUG):
        os.environ["TSS2_LOG"] = "all+none"


class _DefinedIndexReader(NVReadEK):  # type: ignore[misc]
    """NVReadEK that reads only NV indices the TPM lists as defined.

    The TCG EK templates are found by probing NV indices (certificate, template, nonce; low and high range), and
    most are absent on any one TPM. tpm2-pytss probes with Esys_TR_FromTPMPublic, and tss2-esys logs every
    absent index as an ERROR on stderr (six lines per enrollment that succeeded). One TPM2_GetCapability lists
    the defined indices instead; an absent one is NoSuchIndex without asking the TPM, and the probing is logged
    at DEBUG (`trustctl enroll -v`). An index deleted in between still fails as before (NVReadEK's own path).
    """

    def __init__(self, ectx: ESAPI) -> None:
        super().__init__(ectx)
        self._defined: set[int] = set()
        more, start = True, _NV_INDEX_FIRST
        while more:
            more, data = ectx.get_capability(TPM2_CAP.HANDLES, start, _NV_HANDLES_PER_CALL)
            handles = [int(h) for h in data.data.handles]
            self._defined.update(handles)
            if not handles:
                break
            start = max(handles) + 1

    def __call__(self, index: int) -> bytes:
        if int(index) not in self._defined:
            log.debug("EK probe: NV index 0x%08x is not defined", int(index))
            raise NoSuchIndex(index)
        data = bytes(super().__call__(index))
        log.debug("EK probe: NV index 0x%08x holds %d bytes", int(index), len(data))
        return data


class TPMDevice:
    """One open connection to a TPM (a TCTI string such as 'swtpm:host=127.0.0.1,port=2321' or 'device:/dev/tpmrm0')."""

    def __init__(self, tcti: str, *, flush_stale: bool = True) -> None:
        _quiet_tss2()
        try:
            self._ectx = ESAPI(tcti)
        except (TSS2_Exception, ValueError, OSError) as exc:
            raise TPMDeviceError(f"cannot open the TPM at {tcti!r}: {exc}; is the TPM (or swtpm) running?") from exc
        self._handles: list[Any] = []
        self._ek: Any = None
        self._ak: Any = None
        self._ek_policy_or = False
        if flush_stale:
            self._flush_stale_transients()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        for handle in reversed(self._handles):
            with contextlib.suppress(TSS2_Exception):  # already gone (TPM restarted): nothing left to free
                self._ectx.flush_context(handle)
        self._handles.clear()
        self._ectx.close()

    def __enter__(self) -> TPMDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _flush_stale_transients(self) -> None:
        try:
            _more, data = self._ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
            for handle in data.data.handles:
                self._ectx.flush_context(self._ectx.tr_from_tpmpublic(handle))
        except TSS2_Exception as exc:
            raise _tss("flushing stale transient handles", exc) from exc

    # -- endorsement --------------------------------------------------------------------------------------
    def endorsement_key(self, kind: EKKind = "rsa", *, template_name: str | None = None) -> EndorsementKey:
        """Recreate the EK from the TCG default template (it is deterministic) and read its certificate from NV.

        `template_name` forces one TCG template (e.g. "EK-ECC256"), certificate or not.
        """
        if self._ek is not None:  # one EK at a time: a TPM without a resource manager has 3 object slots
            self._handles.remove(self._ek)
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(self._ek)
            self._ek = None
        try:
            reader = _DefinedIndexReader(self._ectx)
            names = (template_name,) if template_name else _EK_TEMPLATES[kind]
            used = names[0]
            cert, template = create_ek_template(used, reader)
            for name in names[1:]:
                if cert:
                    break
                with contextlib.suppress(ValueError):  # high-range templates raise when their cert is absent
                    cert, template = create_ek_template(name, reader)
                    used = name
            ek, ek_pub, *_ = self._ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        except (TSS2_Exception, ValueError) as exc:
            raise _tss("creating the endorsement key", exc) from exc
        self._handles.append(ek)
        self._ek = ek
        self._ek_policy_or = used.startswith("EK-HIGH")
        return EndorsementKey(public=bytes(ek_pub.publicArea.marshal()), certificate=bytes(cert) if cert else None)

    # -- attestation key ----------------------------------------------------------------------------------
    def create_attestation_key(self, kind: AKKind = "ecc") -> AttestationKey:
        """A fresh restricted signing key under the owner hierarchy's storage key, loaded for this session."""
        try:
            srk, *_ = self._ectx.create_primary(None, "ecc256:aes128cfb")
            self._handles.append(srk)
            template = TPM2B_PUBLIC.parse(_AK_TEMPLATES[kind], objectAttributes=_AK_ATTRIBUTES)
            ak_priv, ak_pub, *_ = self._ectx.create(srk, None, template)
            ak = self._ectx.load(srk, ak_priv, ak_pub)
            self._handles.append(ak)
            name = bytes(self._ectx.tr_get_name(ak))
        except (TSS2_Exception, ValueError) as exc:
            raise _tss("creating the attestation key", exc) from exc
        self._ak = ak
        return AttestationKey(
            public=bytes(ak_pub.publicArea.marshal()),
            name=name,
            private_blob=bytes(ak_priv.marshal()),
            public_blob=bytes(ak_pub.marshal()),
        )

    def load_attestation_key(self, private_blob: bytes, public_blob: bytes) -> AttestationKey:
        """The AK made at enrollment, loaded again under the (re-derived) storage key, for a renewal's quote."""
        try:
            srk, *_ = self._ectx.create_primary(None, "ecc256:aes128cfb")
            self._handles.append(srk)
            ak_priv, _ = TPM2B_PRIVATE.unmarshal(private_blob)
            ak_pub, _ = TPM2B_PUBLIC.unmarshal(public_blob)
            ak = self._ectx.load(srk, ak_priv, ak_pub)
            self._handles.append(ak)
            name = bytes(self._ectx.tr_get_name(ak))
        except (TSS2_Exception, ValueError) as exc:
            raise _tss("loading the attestation key", exc) from exc
        self._ak = ak
        return AttestationKey(public=bytes(ak_pub.publicArea.marshal()), name=name)

    def activate_credential(self, blob: bytes, encrypted_secret: bytes) -> bytes:
        """Recover the hub's secret: only the TPM holding both the EK and the AK named in the blob can."""
        if self._ek is None or self._ak is None:
            raise TPMDeviceError("activate_credential needs endorsement_key() and create_attestation_key() first")
        if self._ek_policy_or:
            raise TPMDeviceError(
                "this EK uses a high-range TCG template whose policy is a PolicyOR, not yet supported for "
                "ActivateCredential; enroll with the RSA EK (trustctl enroll --ek rsa)"
            )
        try:
            id_object, _ = TPM2B_ID_OBJECT.unmarshal(blob)
            secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        except Exception as exc:
            raise CredentialActivationError(f"the credential from the hub does not unmarshal: {exc}") from exc
        session = None
        try:
            session = self._ectx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            # The default EK's policy is PolicySecret(TPM_RH_ENDORSEMENT).
            self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            recovered = self._ectx.activate_credential(
                self._ak, self._ek, id_object, secret, session1=ESYS_TR.PASSWORD, session2=session
            )
        except TSS2_Exception as exc:
            raise CredentialActivationError(
                f"the TPM refused to activate the credential ({exc}): the AK is not in the same TPM as the EK, "
                "or the credential was made for another key"
            ) from exc
        finally:
            if session is not None:
                with contextlib.suppress(TSS2_Exception):  # a failed policy command may have closed it
                    self._ectx.flush_context(session)
        return bytes(recovered)

    # -- quote --------------------------------------------------------------------------------------------
    def quote(self, selection: Mapping[HashAlg, Sequence[int]], nonce: bytes) -> QuoteEvidence:
        if self._ak is None:
            raise TPMDeviceError("quote needs create_attestation_key() first")
        spec = selection_string(selection)
        try:
            attest, signature = self._ectx.quote(self._ak, spec, nonce)
        except TSS2_Exception as exc:
            raise _tss("quote", exc) from exc
        return QuoteEvidence(
            attest=bytes(attest.marshal())[2:],  # strip the TPM2B size: the signature covers TPMS_ATTEST
            signature=bytes(signature.marshal()),
            pcr_values=self.read_pcrs(selection),
        )

    def read_pcrs(self, selection: Mapping[HashAlg, Sequence[int]]) -> dict[HashAlg, dict[int, bytes]]:
        values: dict[HashAlg, dict[int, bytes]] = {}
        for bank, pcrs in selection.items():
            wanted = sorted(set(pcrs))
            got: dict[int, bytes] = {}
            while len(got) < len(wanted):
                batch = [i for i in wanted if i not in got][:_PCR_READ_BATCH]
                try:
                    _counter, sel_out, digests = self._ectx.pcr_read(f"{bank.label}:{','.join(map(str, batch))}")
                except TSS2_Exception as exc:
                    raise _tss(f"reading {bank.label} PCRs", exc) from exc
                indices = [
                    i for s in sel_out for i in range(s.sizeofSelect * 8) if s.pcrSelect[i // 8] & (1 << (i % 8))
                ]
                if not indices:
                    raise TPMDeviceError(f"the TPM has no {bank.label} PCR bank (asked for PCRs {batch})")
                for index, digest in zip(indices, digests, strict=False):
                    got[index] = bytes(digest)
            values[bank] = got
        return values

    def extend_pcr(self, pcr: int, data: bytes) -> None:
        """Measure data into a PCR (TPM2_PCR_Event: hashed into every bank), as a boot stage would."""
        try:
            self._ectx.pcr_event(getattr(ESYS_TR, f"PCR{pcr}"), data)
        except (TSS2_Exception, AttributeError) as exc:
            raise _tss(f"extending PCR {pcr}", exc) from exc

    def extend_pcr_digests(self, pcr: int, digests: Mapping[HashAlg, bytes]) -> None:
        """TPM2_PCR_Extend with precomputed digests, as firmware does while writing its event log."""
        from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

        entries = []
        for bank, digest in digests.items():
            entry = TPMT_HA(hashAlg=int(bank))
            setattr(entry.digest, bank.label, digest)
            entries.append(entry)
        values = TPML_DIGEST_VALUES(entries)
        try:
            self._ectx.pcr_extend(getattr(ESYS_TR, f"PCR{pcr}"), values)
        except (TSS2_Exception, AttributeError) as exc:
            raise _tss(f"extending PCR {pcr}", exc) from exc
