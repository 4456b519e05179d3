"""Reference values from a golden device: one device class made from a known-good boot, and merged into a file.

A golden device is only golden if its event log reproduces its TPM's PCRs (`capture_class` refuses otherwise):
then the PCR values are what that firmware and OS measure, and the log says what they were (Secure Boot on or
off). Several golden devices (other firmware versions, other models) are merged into one class as *one of*
each PCR's values. The result is in exactly the format `ReferencePolicy` loads (the hub's `--reference-values`),
and is validated by it before anyone writes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import yaml

from attestation.errors import EventLogError, PolicyConfigError
from attestation.eventlog import EventLog, check_replay
from attestation.refvalues import ReferencePolicy
from attestation.tpm2.constants import HashAlg

_SECURE_BOOT_TYPE = "EV_EFI_VARIABLE_DRIVER_CONFIG"
_EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001


def capture_class(pcrs: Mapping[int, bytes], bank: HashAlg, event_log: EventLog | None) -> dict[str, Any]:
    """The class one golden device defines: its PCR values (as read from its TPM), `event_log: required` and
    the rules its log supports (the Secure Boot state) when a log is given; the log must replay to `pcrs`."""
    if not pcrs:
        raise PolicyConfigError("no PCRs to capture (an empty class would allow anything)")
    captured: dict[str, Any] = {"pcr_bank": bank.label}
    if bank == HashAlg.SHA1:
        captured["allow_sha1_quotes"] = True  # the loader insists the sha1 bank is said out loud
    captured["pcrs"] = {index: [value.hex()] for index, value in sorted(pcrs.items())}
    if event_log is None:
        captured["event_log"] = "optional"
        return captured
    if bank not in event_log.banks:
        raise EventLogError(
            f"the event log has no {bank.label} digests (it has {', '.join(b.label for b in event_log.banks)}); "
            f"capture with --bank {event_log.banks[0].label}"
        )
    check_replay(event_log, {bank: pcrs}, what="TPM's")
    captured["event_log"] = "required"
    rule = secure_boot_rule(event_log)
    if rule is not None:
        captured["events"] = {"require": [rule]}
    return captured


def secure_boot_rule(event_log: EventLog) -> dict[str, Any] | None:
    """A rule pinning the SecureBoot variable as this boot measured it into PCR 7 (its last measurement)."""
    found = [
        e
        for e in event_log.events
        if e.pcr == 7 and e.event_type == _EV_EFI_VARIABLE_DRIVER_CONFIG and e.efi_variable_name == "SecureBoot"
    ]
    if not found:
        return None
    return {
        "pcr": 7,
        "type": _SECURE_BOOT_TYPE,
        "variable": "SecureBoot",
        "data_sha256": hashlib.sha256(found[-1].data).hexdigest(),
    }


def secure_boot_state(event_log: EventLog | None) -> str | None:
    """'enabled' or 'disabled' as the log measured it, None when it did not."""
    if event_log is None:
        return None
    for event in reversed(event_log.events):
        if event.pcr == 7 and event.efi_variable_name == "SecureBoot":
            return "enabled" if event.efi_variable_value == b"\x01" else "disabled"
    return None


def merge_class(existing: Mapping[str, Any], captured: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`existing` (a class of the file, already validated) with this device's values added as alternatives.

    Refused (PolicyConfigError naming `where`) when they cannot be one class: another bank, other PCRs (the
    devices captured before have no value for a PCR only this one lists, and this one none for theirs), or
    another Secure Boot state."""
    merged = dict(existing)
    bank = str(existing.get("pcr_bank", "sha256"))
    if bank != captured["pcr_bank"]:
        raise PolicyConfigError(f"{where}.pcr_bank is {bank}; capture with --bank {bank}")
    old_pcrs = {int(k): v for k, v in (existing.get("pcrs") or {}).items()}
    new_pcrs: dict[int, list[str]] = captured["pcrs"]
    if set(old_pcrs) != set(new_pcrs):
        listed = ",".join(str(i) for i in sorted(old_pcrs))
        raise PolicyConfigError(
            f"{where}.pcrs lists PCRs {listed}, this capture {','.join(str(i) for i in sorted(new_pcrs))}; "
            f"capture with --pcrs {listed}"
        )
    pcrs: dict[int, Any] = {}
    for index, values in sorted(old_pcrs.items()):
        if values == "any":
            pcrs[index] = "any"
            continue
        known = [str(v).lower() for v in values]
        pcrs[index] = known + [v for v in new_pcrs[index] if v not in known]
    merged["pcrs"] = pcrs
    modes = {str(existing.get("event_log", "optional")), str(captured["event_log"])}
    if "required" in modes:
        merged["event_log"] = "required"
    events = {k: list(v or []) for k, v in (existing.get("events") or {}).items()}
    for rule in (captured.get("events") or {}).get("require", []):
        require = events.setdefault("require", [])
        if rule in require:
            continue
        for other in require:
            if other.get("variable") == "SecureBoot" and other.get("data_sha256") not in (None, rule["data_sha256"]):
                raise PolicyConfigError(
                    f"{where}.events.require pins another Secure Boot state than this device booted with; "
                    "golden devices of one class must agree (use another --device-class)"
                )
        if not any(other.get("variable") == "SecureBoot" for other in require):
            require.append(rule)
    if events:
        merged["events"] = events
    return merged


def document(classes: Mapping[str, Any], header: list[str], *, source: str) -> str:
    """The file's text: `header` as comment lines, then the classes; validated as the hub will load it."""
    body = {"device_classes": dict(classes)}
    ReferencePolicy.from_mapping(body, source=source)  # never write what the hub would refuse
    comments = "".join(line if line.startswith("#") else f"# {line}".rstrip() + "\n" for line in header)
    return comments + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def leading_comments(text: str) -> tuple[list[str], bool]:
    """A file's comment lines before its first key (kept on merge), and whether more comments follow (lost:
    PyYAML does not keep them)."""
    lines = text.splitlines(keepends=True)
    head: list[str] = []
    for line in lines:
        if line.startswith("#") or not line.strip():
            if line.startswith("#"):
                head.append(line)
            continue
        break
    rest = lines[len(head) :]
    return [h if h.endswith("\n") else h + "\n" for h in head], any("#" in line for line in rest)


__all__ = ["capture_class", "document", "leading_comments", "merge_class", "secure_boot_rule", "secure_boot_state"]
