"""TPMS_ATTEST: what the TPM signed when it quoted (magic, nonce, clock, PCR selection and digest)."""

from __future__ import annotations

from dataclasses import dataclass

from attestation.errors import MalformedStructureError
from attestation.tpm2.constants import TPM_ST_ATTEST_QUOTE, HashAlg
from attestation.tpm2.marshal import Reader

#: a TPM has at most a handful of banks; more selections are not from a TPM
MAX_SELECTIONS = 16
#: 24 PCRs fit in 3 bytes; TPMs allow up to 4 (PCR_SELECT_MAX)
MAX_SIZEOF_SELECT = 4

Selection = tuple[tuple[HashAlg, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class TpmsAttest:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: Selection
    pcr_digest: bytes


def parse_attest(data: bytes) -> TpmsAttest:
    r = Reader(data, "TPMS_ATTEST")
    magic = r.u32()
    kind = r.u16()
    signer = r.tpm2b(max_size=68)
    extra = r.tpm2b(max_size=64)
    clock, reset, restart, safe = r.u64(), r.u32(), r.u32(), r.u8()
    firmware = r.u64()
    if kind != TPM_ST_ATTEST_QUOTE:
        raise MalformedStructureError(f"TPMS_ATTEST: type 0x{kind:04x} is not a quote (0x{TPM_ST_ATTEST_QUOTE:04x})")
    count = r.u32()
    if count > MAX_SELECTIONS:
        raise MalformedStructureError(f"TPMS_ATTEST: {count} PCR selections (max {MAX_SELECTIONS})")
    selection = []
    for _ in range(count):
        bank = HashAlg.from_id(r.u16(), where="TPMS_ATTEST PCR selection")
        size = r.u8()
        if size > MAX_SIZEOF_SELECT:
            raise MalformedStructureError(f"TPMS_ATTEST: sizeofSelect {size} (max {MAX_SIZEOF_SELECT})")
        bitmap = r.raw(size)
        pcrs = tuple(i for i in range(size * 8) if bitmap[i // 8] & (1 << (i % 8)))
        selection.append((bank, pcrs))
    digest = r.tpm2b(max_size=64)
    r.expect_end()
    return TpmsAttest(
        magic=magic,
        type=kind,
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset,
        restart_count=restart,
        safe=bool(safe),
        firmware_version=firmware,
        selection=tuple(selection),
        pcr_digest=digest,
    )
