"""`trustctl refvalues capture|check`: reference values from a golden device, and why a boot is refused.

`capture` reads a golden device's PCRs from its TPM and its boot event log, refuses when the log does not
reproduce the PCRs (a golden device with an inconsistent log is no golden device), and writes the device class
in the format `trustd --reference-values` loads (attestation/golden.py). `check` judges a boot against such a
file with the hub's own checker (`DeviceClassPolicy.check_pcrs`, the code path of every enrollment) and, when
refused, shows each PCR outside its allowed values with the log's events that extended it: the boot component
that changed. With a TPM it also says whether the log agrees with the PCRs (if not, the log is suspect, not
the boot).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attestation.eventlog import EventLog
    from attestation.refvalues import DeviceClassPolicy, PcrMismatch
    from attestation.tpm2.constants import HashAlg
    from edgetrust._internal.cli import Parser

#: what `trustctl enroll` reads when --event-log is not given (if it is readable)
KERNEL_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
#: the kernel's TPM resource manager: what a device's own TPM is, unless told otherwise
DEFAULT_TPM = "device:/dev/tpmrm0"
#: a PCR values file is a few KiB; anything far larger is not one
MAX_PCR_FILE_BYTES = 1024 * 1024
_BANKS = ("sha256", "sha384", "sha1")


def _pcr_list(text: str) -> list[int]:
    """'0-7', '0,2,4-7' -> PCR indices (argparse type)."""
    found: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected PCR indices such as 0-7 or 0,2,4-7, got {text!r}") from None
        if not 0 <= first <= last < 24:
            raise argparse.ArgumentTypeError(f"PCR range {part!r} is outside 0-23")
        found.update(range(first, last + 1))
    return sorted(found)


def _add_tpm(parser: argparse.ArgumentParser, *, default: str | None, what: str) -> None:
    parser.add_argument(
        "--tpm",
        default=default,
        metavar="TCTI",
        help=f"{what}: a TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"
        + (f" (default {default})" if default else ""),
    )


def _add_event_log(parser: argparse.ArgumentParser, *, when: str = "") -> None:
    parser.add_argument(
        "--event-log",
        type=Path,
        metavar="PATH",
        help=f"TCG boot event log (default{when}: the kernel's, {KERNEL_EVENT_LOG}, if readable)",
    )
    parser.add_argument("--eventlog", dest="event_log", type=Path, help=argparse.SUPPRESS)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="say each step, the TPM library's own lines too")


def add_parser(sub: argparse._SubParsersAction[Parser], help: str) -> None:
    from edgetrust._internal.cli import add_json

    refvalues = sub.add_parser("refvalues", help=help)
    commands = refvalues.add_subparsers(dest="refvalues_command", required=True)

    capture = commands.add_parser(
        "capture",
        help="write a device class's reference values from this (golden) device's TPM and event log",
        description="Reads the PCRs from the TPM and the boot event log, refuses when the log does not replay "
        "to the TPM's PCRs, and writes the class in the format of trustd --reference-values.",
    )
    capture.add_argument("--device-class", required=True, help="the class these values define, e.g. edge-gateway")
    _add_tpm(capture, default=DEFAULT_TPM, what="the golden device's TPM")
    _add_event_log(capture)
    capture.add_argument(
        "--pcrs",
        type=_pcr_list,
        default=_pcr_list("0-7"),
        metavar="LIST",
        help="PCRs to pin, e.g. 0-7 or 0,2,4-7 (default 0-7)",
    )
    capture.add_argument("--bank", choices=_BANKS, default="sha256", help="PCR bank (default sha256)")
    capture.add_argument("--out", type=Path, metavar="FILE", help="reference-values file to write (default: print it)")
    capture.add_argument(
        "--merge",
        action="store_true",
        help="add this device's values to --out's class (one of each PCR's values), keeping its other classes; "
        "without it an existing --out is refused",
    )
    _add_verbose(capture)
    add_json(capture)

    check = commands.add_parser(
        "check",
        help="would the hub accept this boot? which PCR differs, and which boot events extended it",
        description="Judges PCR values (from --tpm, --pcr-values, or the event log's own replay) and the event "
        "log against a reference-values file, with the hub's checker.",
    )
    check.add_argument(
        "--reference-values", type=Path, required=True, metavar="FILE", help="the file trustd --reference-values reads"
    )
    check.add_argument("--device-class", required=True, help="the class to judge against, e.g. edge-gateway")
    _add_event_log(check, when=" with --tpm")
    _add_tpm(check, default=None, what="read the PCRs from this TPM (and compare the log with them)")
    check.add_argument(
        "--pcr-values",
        type=Path,
        metavar="FILE",
        help="PCR values as YAML/JSON {sha256: {0: HEX, ...}} (also tpm2_pcrread's output)",
    )
    _add_verbose(check)
    add_json(check)


def run(args: argparse.Namespace) -> int:
    from edgetrust._internal import logs

    if args.verbose:
        logs.configure(verbose=True)
    if args.refvalues_command == "capture":
        return _capture(args)
    return _check(args)


def _event_log_path(args: argparse.Namespace, *, local: bool = True) -> Path | None:
    """--event-log, else the kernel's when the command is about this machine (`local`: its own TPM)."""
    path: Path | None = args.event_log
    if path is None and local and KERNEL_EVENT_LOG.is_file():
        return KERNEL_EVENT_LOG
    return path


def _read_pcrs(tcti: str, selection: dict[HashAlg, tuple[int, ...]]) -> dict[HashAlg, dict[int, bytes]]:
    from attestation.device import TPMDevice

    with TPMDevice(tcti, flush_stale=False) as tpm:  # reads only: another user's handles stay
        return tpm.read_pcrs(selection)


# -- capture ---------------------------------------------------------------------------------------------------
def _capture(args: argparse.Namespace) -> int:
    import yaml

    from attestation.errors import PolicyConfigError
    from attestation.eventlog import read_event_log
    from attestation.golden import capture_class, document, leading_comments, merge_class, secure_boot_state
    from attestation.refvalues import ReferencePolicy
    from attestation.tpm2.constants import HashAlg
    from edgetrust._internal.cli import EXIT_OK, UsageError
    from edgetrust._internal.files import write_public

    out: Path | None = args.out
    if args.merge and out is None:
        raise UsageError("--merge needs --out FILE: the reference-values file to add this device to")
    if out is not None and out.suffix == ".json":
        raise UsageError(f"--out {out}: capture writes YAML (with a comment saying where it came from); use .yaml")
    existing = out is not None and out.exists()
    if existing and not args.merge:
        raise UsageError(f"--out {out} exists; add --merge to add this device to it, or choose another file")
    bank = HashAlg.from_label(args.bank)
    log_path = _event_log_path(args)
    log = read_event_log(log_path) if log_path is not None else None
    values = _read_pcrs(args.tpm, {bank: tuple(args.pcrs)}).get(bank, {})
    captured = capture_class(values, bank, log)

    name: str = args.device_class
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    secure_boot = secure_boot_state(log)
    origin = (
        f"# {name}: golden device {socket.gethostname()}, TPM {args.tpm}, captured {when}; {bank.label} PCRs "
        f"{','.join(str(i) for i in args.pcrs)}; "
        + (f"event log {log_path} ({len(log.events)} events)" if log is not None else "no event log")
        + (f", Secure Boot {secure_boot}" if secure_boot else "")
        + "\n"
    )
    header = [
        "# Reference values per device class (trustd --reference-values), written by trustctl refvalues capture.\n"
    ]
    classes: dict[str, Any] = {}
    lost_comments = False
    if existing and out is not None:
        ReferencePolicy.load(out)  # the file as the hub reads it: a broken one is named, never half-merged
        text = out.read_text()
        header, lost_comments = leading_comments(text)
        classes = dict(yaml.safe_load(text)["device_classes"])
        where = f"{out}: device_classes.{name}"
        if name in classes:
            if not isinstance(classes[name], dict):
                raise PolicyConfigError(f"{where}: expected a mapping")
            classes[name] = merge_class(classes[name], captured, where)
        else:
            classes[name] = captured
    else:
        classes[name] = captured
    text = document(classes, [*header, origin], source=str(out) if out is not None else "<stdout>")
    if out is not None:
        write_public(out, text.encode())
    if args.json:
        print(
            json.dumps(
                {
                    "device_class": name,
                    "written": str(out) if out is not None else None,
                    "merged": bool(existing),
                    "class": classes[name],
                    "secure_boot": secure_boot,
                    "event_log": str(log_path) if log_path is not None else None,
                },
                default=str,
            )
        )
    elif out is None:
        sys.stdout.write(text)
    else:
        verb = "added to" if existing else "written to"
        print(f"device class {name!r} ({bank.label} PCRs {','.join(str(i) for i in args.pcrs)}) {verb} {out}")
        if log is None:
            print("  no event log: event_log is optional, no event rules (give --event-log to pin the boot events)")
        if lost_comments:
            print(f"  note: comments inside {out} after its header were not kept")
    return EXIT_OK


# -- check -----------------------------------------------------------------------------------------------------
def _pcr_file(path: Path) -> dict[HashAlg, dict[int, bytes]]:
    """PCR values from a file: {bank: {index: hex}} as YAML or JSON; tpm2_pcrread's `0 : 0x3A76...` lines
    (YAML reads those as integers) too."""
    import yaml

    from attestation.errors import UnsupportedAlgorithmError
    from attestation.tpm2.constants import HashAlg
    from edgetrust._internal.cli import UsageError

    with path.open("rb") as handle:
        raw = handle.read(MAX_PCR_FILE_BYTES + 1)
    if len(raw) > MAX_PCR_FILE_BYTES:
        raise UsageError(f"--pcr-values {path}: larger than {MAX_PCR_FILE_BYTES} bytes; not a PCR values file")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UsageError(f"--pcr-values {path}: not YAML or JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--pcr-values {path}: expected a mapping such as {{sha256: {{0: HEX}}}}")
    values: dict[HashAlg, dict[int, bytes]] = {}
    for label, pcrs in data.items():
        try:
            bank = HashAlg.from_label(str(label))
        except UnsupportedAlgorithmError:
            raise UsageError(f"--pcr-values {path}: {str(label)[:20]!r} is not a PCR bank") from None
        if not isinstance(pcrs, dict):
            raise UsageError(f"--pcr-values {path}: {bank.label}: expected PCR index -> value")
        got: dict[int, bytes] = {}
        for key, value in pcrs.items():
            where = f"--pcr-values {path}: {bank.label}.{str(key)[:8]}"
            try:
                index = int(key)
                if isinstance(value, int):
                    digest = value.to_bytes(bank.digest_size, "big")
                else:
                    text = str(value).lower().removeprefix("0x")
                    digest = bytes.fromhex(text)
            except (ValueError, OverflowError):
                raise UsageError(f"{where}: not a PCR index and a hex value") from None
            if not 0 <= index < 24 or len(digest) != bank.digest_size:
                raise UsageError(f"{where}: index outside 0-23 or not a {bank.label} digest")
            got[index] = digest
        values[bank] = got
    return values


def _events_view(log: EventLog, pcr: int, bank: HashAlg) -> list[dict[str, Any]]:
    shown = bank if bank in log.banks else log.banks[0]
    return [
        {
            "index": e.index,
            "type": e.type_name,
            "description": e.description,
            "digest": (e.digests.get(shown) or b"").hex(),
            "bank": shown.label,
        }
        for e in log.events_for(pcr)
        if e.event_type != 0x03  # EV_NO_ACTION extends nothing
    ]


def _mismatch_view(m: PcrMismatch, log: EventLog | None) -> dict[str, Any]:
    replayed = log.replay().get(m.bank, {}).get(m.pcr) if log is not None else None
    return {
        "pcr": m.pcr,
        "bank": m.bank.label,
        "value": m.value.hex() if m.value is not None else None,
        "replayed": replayed.hex() if replayed is not None else None,
        "allowed": sorted(v.hex() for v in m.allowed),
        "events": _events_view(log, m.pcr, m.bank) if log is not None else [],
    }


def _check(args: argparse.Namespace) -> int:
    from attestation.errors import EventLogError
    from attestation.eventlog import check_replay, read_event_log
    from attestation.refvalues import ReferencePolicy, ReferenceValueViolationError
    from edgetrust._internal.cli import EXIT_OK, EXIT_REFUSED, UsageError, fail

    if args.tpm and args.pcr_values:
        raise UsageError("give --tpm or --pcr-values, not both: they are two sources of the same PCR values")
    policy = ReferencePolicy.load(args.reference_values)
    cls: DeviceClassPolicy = policy.device_class(args.device_class)
    log_path = _event_log_path(args, local=bool(args.tpm))  # an operator checking a copied log: not their own
    log = read_event_log(log_path) if log_path is not None else None
    if args.tpm:
        source, what = f"TPM {args.tpm}", "TPM's"
        pcrs = _read_pcrs(args.tpm, cls.selection())
    elif args.pcr_values:
        source, what = f"PCR values {args.pcr_values}", "given"
        pcrs = _pcr_file(args.pcr_values)
    elif log is not None:
        source, what = f"the replay of {log_path}", "replayed"
        pcrs = {bank: values for bank, values in log.replay().items() if bank == cls.bank}
    else:
        raise UsageError("nothing to check: give --event-log, --tpm or --pcr-values")

    agrees: bool | None = None
    disagreement: str | None = None
    if log is not None and what != "replayed":
        try:
            check_replay(log, pcrs, what=what)
            agrees = True
        except EventLogError as exc:
            agrees, disagreement = False, str(exc)
    violations: list[str] = []
    mismatches: list[dict[str, Any]] = []
    try:
        cls.check_pcrs(pcrs, log, what=what)
    except ReferenceValueViolationError as exc:
        violations = list(exc.violations)
        mismatches = [_mismatch_view(m, log) for m in exc.mismatches]
    except EventLogError as exc:
        violations = [str(exc)]
    accepted = not violations
    view = {
        "accepted": accepted,
        "device_class": cls.name,
        "reference_values": str(args.reference_values),
        "pcr_source": source,
        "event_log": str(log_path) if log_path is not None else None,
        "log_agrees_with_pcrs": agrees,
        "log_disagreement": disagreement,
        "violations": violations,
        "mismatches": mismatches,
    }
    if args.json:
        print(json.dumps(view))
    else:
        _print_check(view)
    if accepted:
        return EXIT_OK
    return fail(
        "trustctl refvalues check", f"device class {cls.name!r} would refuse this boot: {violations[0]}", EXIT_REFUSED
    )


def _print_check(view: dict[str, Any]) -> None:
    verdict = "would be accepted" if view["accepted"] else "would be REFUSED"
    print(f"device class {view['device_class']!r} ({view['reference_values']}): {verdict}")
    print(f"  PCR values from {view['pcr_source']}" + (f", event log {view['event_log']}" if view["event_log"] else ""))
    if view["log_agrees_with_pcrs"] is True:
        print("  the event log replays to these PCR values")
    elif view["log_agrees_with_pcrs"] is False:
        print(
            "  the event log DISAGREES with these PCR values: the log, not the boot, is suspect "
            f"({view['log_disagreement']})"
        )
    for m in view["mismatches"]:
        print(f"  PCR {m['pcr']} ({m['bank']}): " + (m["value"] or "not among the PCR values"))
        if m["replayed"] and m["replayed"] != m["value"]:
            print(f"    the log replays to {m['replayed']}")
        for allowed in m["allowed"]:
            print(f"    allowed {allowed}")
        if m["events"]:
            print(f"    events of the log extending PCR {m['pcr']}:")
        for e in m["events"]:
            print(f"      #{e['index']} {e['type']} {e['description']!s} {e['bank']}:{e['digest']}")
    listed = {m["pcr"] for m in view["mismatches"]}
    for violation in view["violations"]:
        if not any(violation.startswith(f"PCR {i} ") for i in listed):
            print(f"  {violation}")
