"""TCG PC Client boot event logs: parse (crypto-agile or legacy SHA-1), replay, and check against a quote.

The log says *what* was measured; the quote proves the PCRs. A log is only believed once its replay equals
the quoted PCRs (`verify_replay`); then policies may name boot events, not only hashes.
Format: TCG PC Client Platform Firmware Profile, §10 (little-endian, unlike TPM structures).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from attestation.errors import EventLogError
from attestation.tpm2.constants import HashAlg

if TYPE_CHECKING:
    from attestation.quote import VerifiedQuote

#: real server logs hold a few thousand events; more is an attempt to burn CPU
MAX_EVENTS = 20_000
#: the largest legitimate event (a UEFI variable such as db/dbx) stays well below this
MAX_EVENT_DATA = 1024 * 1024
MAX_LOG_BYTES = 4 * 1024 * 1024
PCR_COUNT = 24

EV_NO_ACTION = 0x03
EVENT_TYPES: dict[int, str] = {
    0x00: "EV_PREBOOT_CERT",
    0x01: "EV_POST_CODE",
    0x02: "EV_UNUSED",
    0x03: "EV_NO_ACTION",
    0x04: "EV_SEPARATOR",
    0x05: "EV_ACTION",
    0x06: "EV_EVENT_TAG",
    0x07: "EV_S_CRTM_CONTENTS",
    0x08: "EV_S_CRTM_VERSION",
    0x09: "EV_CPU_MICROCODE",
    0x0A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0B: "EV_TABLE_OF_DEVICES",
    0x0C: "EV_COMPACT_HASH",
    0x0D: "EV_IPL",
    0x0E: "EV_IPL_PARTITION_DATA",
    0x0F: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
}
EVENT_TYPE_IDS = {name: value for value, name in EVENT_TYPES.items()}
_VARIABLE_EVENTS = {0x80000001, 0x80000002, 0x8000000C, 0x800000E0}
#: EV_EFI_BOOT_SERVICES_APPLICATION, _DRIVER, EV_EFI_RUNTIME_SERVICES_DRIVER: UEFI_IMAGE_LOAD_EVENT data
_IMAGE_EVENTS = {0x80000003, 0x80000004, 0x80000005}
DESCRIPTION_CHARS = 120


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    pcr: int
    event_type: int
    digests: Mapping[HashAlg, bytes]
    data: bytes

    @property
    def type_name(self) -> str:
        return EVENT_TYPES.get(self.event_type, f"0x{self.event_type:08x}")

    @property
    def efi_variable_name(self) -> str | None:
        """The UEFI variable an EV_EFI_VARIABLE_* event measured (UEFI_VARIABLE_DATA), if it parses."""
        if self.event_type not in _VARIABLE_EVENTS or len(self.data) < 32:
            return None
        name_len, data_len = struct.unpack_from("<QQ", self.data, 16)
        end = 32 + 2 * name_len
        if name_len > 1024 or end + data_len > len(self.data):
            return None
        try:
            return self.data[32:end].decode("utf-16-le")
        except UnicodeDecodeError:
            return None

    @property
    def efi_variable_value(self) -> bytes | None:
        """The value of the UEFI variable an EV_EFI_VARIABLE_* event measured, if it parses."""
        name = self.efi_variable_name
        if name is None:
            return None
        name_len, data_len = struct.unpack_from("<QQ", self.data, 16)
        start = 32 + 2 * name_len
        return self.data[start : start + data_len]

    @property
    def description(self) -> str:
        """What was measured, for people: a UEFI variable and its value, an image's file path, the text of a
        version or action event, else the first bytes in hex. The log is the device's word and may carry
        terminal escapes, so only printable ASCII is kept, and at most DESCRIPTION_CHARS characters."""
        return _printable(_describe(self))

    @property
    def efi_variable_guid(self) -> uuid.UUID | None:
        if self.efi_variable_name is None:
            return None
        return uuid.UUID(bytes_le=self.data[:16])


def _describe(event: Event) -> str:
    value = event.efi_variable_value
    if value is not None:
        shown = value[:16].hex() + (f"… ({len(value)} bytes)" if len(value) > 16 else "")
        return f"{event.efi_variable_name} = {shown or '(empty)'}"
    if event.event_type == 0x04:  # EV_SEPARATOR
        return "separator (firmware error)" if event.data == b"\xff\xff\xff\xff" else "separator"
    if event.event_type in _IMAGE_EVENTS:
        path = _image_path(event.data)
        if path:
            return path
    return _text(event.data)


def _image_path(data: bytes) -> str | None:
    """The file path nodes of a UEFI_IMAGE_LOAD_EVENT's device path (UEFI spec §10.3.5.4), joined."""
    if len(data) < 32:
        return None
    (path_len,) = struct.unpack_from("<Q", data, 24)
    path = data[32 : 32 + path_len] if path_len <= len(data) - 32 else b""
    parts, offset = [], 0
    while offset + 4 <= len(path):
        node_type, subtype, length = path[offset], path[offset + 1], struct.unpack_from("<H", path, offset + 2)[0]
        if length < 4 or node_type == 0x7F:  # malformed, or the end of the device path
            break
        if node_type == 0x04 and subtype == 0x04:  # media device path: file path (UTF-16, NUL-terminated)
            parts.append(path[offset + 4 : offset + length].decode("utf-16-le", "replace").rstrip("\x00"))
        offset += length
    return "".join(parts) or None


def _text(data: bytes) -> str:
    stripped = data.rstrip(b"\x00")
    if stripped and all(32 <= b < 127 for b in stripped):
        return stripped.decode("ascii")
    if len(data) >= 2 and len(data) % 2 == 0:  # UCS-2, as UEFI writes strings (before stripping: NULs are half)
        wide = data.decode("utf-16-le", "replace").rstrip("\x00")
        if wide and all(32 <= ord(c) < 127 for c in wide):
            return wide
    return (data[:16].hex() + (f"… ({len(data)} bytes)" if len(data) > 16 else "")) or "(no data)"


def _printable(text: str) -> str:
    clean = "".join(c if 32 <= ord(c) < 127 or c == "…" else "?" for c in text)
    return clean if len(clean) <= DESCRIPTION_CHARS else clean[: DESCRIPTION_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class EventLog:
    events: tuple[Event, ...]
    banks: tuple[HashAlg, ...]
    startup_locality: int

    def events_for(self, pcr: int) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.pcr == pcr)

    def replay(self) -> dict[HashAlg, dict[int, bytes]]:
        """PCR values the log implies, for every PCR that has at least one measured event."""
        values: dict[HashAlg, dict[int, bytes]] = {bank: {} for bank in self.banks}
        for event in self.events:
            if event.event_type == EV_NO_ACTION:
                continue
            for bank, digest in event.digests.items():
                start = bytes(bank.digest_size)
                if event.pcr == 0:
                    start = start[:-1] + bytes([self.startup_locality])
                current = values[bank].get(event.pcr, start)
                values[bank][event.pcr] = bank.digest(current + digest)
        return values


class _LE:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.offset + n > len(self.data):
            raise EventLogError(f"event log truncated at offset {self.offset} (wanted {n} bytes)")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    @property
    def done(self) -> bool:
        return self.offset >= len(self.data)


def parse_event_log(data: bytes) -> EventLog:
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(f"event log of {len(data)} bytes exceeds {MAX_LOG_BYTES}")
    if not data:
        raise EventLogError("event log is empty")
    r = _LE(data)
    pcr, event_type = r.u32(), r.u32()
    sha1 = r.take(20)
    first = r.take(_size(r))
    sizes: dict[int, int] = {}
    agile = event_type == EV_NO_ACTION and first.startswith(b"Spec ID Event03\x00")
    if agile:
        sizes = _spec_id(first)
    events: list[Event] = []
    locality = 0
    if not agile:
        events.append(_legacy_event(0, pcr, event_type, sha1, first))
    while not r.done:
        if len(events) >= MAX_EVENTS:
            raise EventLogError(f"event log has more than {MAX_EVENTS} events")
        start = r.offset
        pcr, event_type = r.u32(), r.u32()
        if pcr >= PCR_COUNT and event_type != EV_NO_ACTION:
            raise EventLogError(f"event at offset {start} extends PCR {pcr}, which does not exist")
        if agile:
            digests: dict[HashAlg, bytes] = {}
            for _ in range(r.u32()):
                alg_id = r.u16()
                if alg_id not in sizes:
                    raise EventLogError(
                        f"event at offset {start} uses algorithm 0x{alg_id:04x} not in the Spec ID header"
                    )
                digest = r.take(sizes[alg_id])
                try:
                    digests[HashAlg(alg_id)] = digest
                except ValueError:
                    continue  # an algorithm we do not replay (e.g. SM3); its size is known, so skip it
            payload = r.take(_size(r))
            event = Event(len(events), pcr, event_type, MappingProxyType(digests), payload)
        else:
            digest = r.take(20)
            event = _legacy_event(len(events), pcr, event_type, digest, r.take(_size(r)))
        if event_type == EV_NO_ACTION and event.data.startswith(b"StartupLocality\x00") and len(event.data) >= 17:
            locality = event.data[16]
        events.append(event)
    banks = tuple(HashAlg(a) for a in sizes if a in HashAlg._value2member_map_) if agile else (HashAlg.SHA1,)
    return EventLog(events=tuple(events), banks=banks, startup_locality=locality)


def _size(r: _LE) -> int:
    size = r.u32()
    if size > MAX_EVENT_DATA:
        raise EventLogError(f"event data of {size} bytes at offset {r.offset} exceeds {MAX_EVENT_DATA}")
    return size


def _legacy_event(index: int, pcr: int, event_type: int, digest: bytes, data: bytes) -> Event:
    return Event(index, pcr, event_type, MappingProxyType({HashAlg.SHA1: digest}), data)


def _spec_id(data: bytes) -> dict[int, int]:
    r = _LE(data)
    r.take(16)
    r.u32()  # platformClass
    r.u8(), r.u8(), r.u8()  # spec version minor, major, errata
    r.u8()  # uintnSize
    count = r.u32()
    if count == 0 or count > 16:
        raise EventLogError(f"Spec ID event lists {count} algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, size = r.u16(), r.u16()
        if size == 0 or size > 64:
            raise EventLogError(f"Spec ID event gives algorithm 0x{alg:04x} a digest size of {size}")
        if alg in HashAlg._value2member_map_ and HashAlg(alg).digest_size != size:
            raise EventLogError(f"Spec ID event gives {HashAlg(alg).label} a digest size of {size}")
        sizes[alg] = size
    return sizes


def verify_replay(log: EventLog, quote: VerifiedQuote) -> None:
    """Every quoted PCR the log measures must replay to the quoted value; else the log is lying."""
    check_replay(log, quote.pcrs, what="quoted")


def check_replay(log: EventLog, pcrs: Mapping[HashAlg, Mapping[int, bytes]], *, what: str = "quoted") -> None:
    """`verify_replay` against PCR values from anywhere (a quote, or a TPM read by `trustctl refvalues`):
    `what` says where they came from in the error ("quoted", "TPM's")."""
    replayed = log.replay()
    compared = 0
    for bank, values in pcrs.items():
        for index, value in sorted(values.items()):
            expected = replayed.get(bank, {}).get(index)
            if expected is None:
                continue
            compared += 1
            if expected != value:
                raise ReplayMismatchError(
                    f"the event log does not replay to the {what} PCR {index} ({bank.label}): {what} {value.hex()}, "
                    f"replayed {expected.hex()} from {len(log.events_for(index))} events",
                    pcr=index,
                    bank=bank,
                )
    if compared == 0:
        raise EventLogError(
            f"the event log ({', '.join(b.label for b in log.banks)}) measures none of the {what} PCRs, "
            "so it proves nothing about this boot"
        )


class ReplayMismatchError(EventLogError):
    """The log replays to another value than the TPM holds for `pcr`: the log, not the boot, is suspect."""

    def __init__(self, message: str, *, pcr: int, bank: HashAlg) -> None:
        super().__init__(message)
        self.pcr = pcr
        self.bank = bank


def read_event_log(path: Path) -> EventLog:
    """Parse the log in `path`, reading at most MAX_LOG_BYTES + 1 bytes: a bigger file is refused without
    being read into memory (it may be a device, a pipe or an attacker's endless file)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LOG_BYTES + 1)
    except OSError as exc:
        raise EventLogError(f"cannot read the event log {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(f"{path}: the event log is larger than {MAX_LOG_BYTES} bytes; refused")
    try:
        return parse_event_log(data)
    except EventLogError as exc:
        raise EventLogError(f"{path}: {exc}") from exc


__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventLog",
    "ReplayMismatchError",
    "check_replay",
    "parse_event_log",
    "read_event_log",
    "verify_replay",
]
