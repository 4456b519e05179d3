"""A simulated measured boot, for software TPMs that have no firmware to measure anything.

Real firmware hashes each boot stage into a PCR and appends a record to the TCG event log; the hub later
replays the log and checks it against the quoted PCRs. swtpm starts with all PCRs at zero and no log, so
demos and tests use this stand-in: it measures a few named boot stages into a real TPM (TPM2_PCR_Extend on
every bank) and writes the matching crypto-agile event log, byte for byte in the format UEFI firmware
writes (TCG PC Client Platform Firmware Profile, §10). It is not used on real devices.

As a command (docs/quickstart.md), one boot of a running swtpm, since it has no firmware of its own:
    python -m localpeers.simboot --tpm swtpm:host=127.0.0.1,port=12321 --out boot.log [--tamper bootloader]
Run it once per start of the TPM: PCRs only grow, so a second run leaves them matching no log.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attestation.tpm2.constants import HashAlg
from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, Parser, fail
from edgetrust._internal.files import write_public

if TYPE_CHECKING:
    from attestation.device import TPMDevice

EV_POST_CODE = 0x00000001
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_S_CRTM_VERSION = 0x00000008
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003

#: EFI_GLOBAL_VARIABLE, the vendor GUID of the SecureBoot variable
_EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")


@dataclass(frozen=True, slots=True)
class BootEvent:
    pcr: int
    event_type: int
    data: bytes
    #: what is hashed into the PCR; firmware hashes the image for applications, the data otherwise
    measured: bytes

    def digest(self, bank: HashAlg) -> bytes:
        return bank.digest(self.measured)


def _efi_variable(name: str, value: bytes) -> bytes:
    encoded = name.encode("utf-16-le")
    return _EFI_GLOBAL_VARIABLE.bytes_le + struct.pack("<QQ", len(name), len(value)) + encoded + value


def boot_events(
    *,
    firmware: bytes = b"edgetrust simulated firmware 1.0",
    bootloader: bytes = b"shim+grub 15.8 (golden)",
    kernel: bytes = b"linux 6.12 (golden)",
    secure_boot: bool = True,
) -> list[BootEvent]:
    """The stages of one boot. Change an image and its PCR changes, as on a real machine."""
    secure_boot_var = _efi_variable("SecureBoot", b"\x01" if secure_boot else b"\x00")
    separator = b"\x00\x00\x00\x00"
    events = [
        BootEvent(0, EV_S_CRTM_VERSION, firmware, firmware),
        BootEvent(0, EV_POST_CODE, b"POST CODE", firmware + b"/post"),
        BootEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, secure_boot_var, secure_boot_var),
    ]
    events += [BootEvent(pcr, EV_SEPARATOR, separator, separator) for pcr in range(8)]
    events += [
        BootEvent(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\\EFI\\BOOT\\BOOTX64.EFI", bootloader),
        BootEvent(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\\vmlinuz", kernel),
    ]
    return events


def write_event_log(events: Sequence[BootEvent], banks: Sequence[HashAlg]) -> bytes:
    """The crypto-agile log: a SHA-1-format Spec ID header event, then one TCG_PCR_EVENT2 per event."""
    spec = b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))
    spec += b"".join(struct.pack("<HH", int(b), b.digest_size) for b in banks) + b"\x00"
    out = [struct.pack("<II", 0, EV_NO_ACTION) + b"\x00" * 20 + struct.pack("<I", len(spec)) + spec]
    for event in events:
        digests = b"".join(struct.pack("<H", int(b)) + event.digest(b) for b in banks)
        out.append(
            struct.pack("<III", event.pcr, event.event_type, len(banks))
            + digests
            + struct.pack("<I", len(event.data))
            + event.data
        )
    return b"".join(out)


def measure_boot(tpm: TPMDevice, events: Sequence[BootEvent], banks: Sequence[HashAlg]) -> bytes:
    """Extend each event into the TPM, then return the event log that describes it."""
    for event in events:
        tpm.extend_pcr_digests(event.pcr, {bank: event.digest(bank) for bank in banks})
    return write_event_log(events, banks)


#: the banks swtpm_setup --pcr-banks sha256,sha1 activates (localpeers/swtpm.py, docs/quickstart.md)
CLI_BANKS = (HashAlg.SHA256, HashAlg.SHA1)

#: what --tamper changes: the image of one stage, or Secure Boot turned off
TAMPERED: dict[str, Callable[[], list[BootEvent]]] = {
    "firmware": lambda: boot_events(firmware=b"edgetrust simulated firmware 1.0 (patched by an attacker)"),
    "bootloader": lambda: boot_events(bootloader=b"shim+grub 15.8 (patched by an attacker)"),
    "kernel": lambda: boot_events(kernel=b"linux 6.12 (patched by an attacker)"),
    "secure-boot-off": lambda: boot_events(secure_boot=False),
}


def main(argv: list[str] | None = None) -> int:
    """Measure one (golden, or tampered) boot into the TPM and write its TCG event log."""
    prog = "localpeers.simboot"
    parser = Parser(prog=f"python -m {prog}", description="a simulated measured boot of a software TPM (dev only)")
    parser.add_argument("--tpm", required=True, help="the TPM's TCTI, e.g. swtpm:host=127.0.0.1,port=12321")
    parser.add_argument("--out", required=True, help="where to write the TCG event log (binary, crypto-agile)")
    parser.add_argument("--tamper", choices=sorted(TAMPERED), help="boot a changed stage instead of the golden one")
    args = parser.parse_args(argv)
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logs probes of absent NV indexes as errors
    from attestation.device import TPMDevice
    from attestation.errors import TPMDeviceError

    events = TAMPERED[args.tamper]() if args.tamper else boot_events()
    try:
        with TPMDevice(args.tpm) as device:
            log = measure_boot(device, events, CLI_BANKS)
    except TPMDeviceError as exc:
        return fail(prog, f"{args.tpm}: {exc}", EXIT_UNREACHABLE)
    try:
        write_public(Path(args.out), log)
    except OSError as exc:
        return fail(prog, f"cannot write {args.out}: {exc.strerror}", EXIT_REFUSED)
    which = f"tampered {args.tamper}" if args.tamper else "golden"
    print(f"measured a {which} boot: {len(events)} events into {args.tpm}, event log {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
