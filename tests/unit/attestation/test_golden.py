"""Reference values from a golden device (attestation/golden.py) and what `check` shows of a log's events:
capture refuses a log that does not replay, a merge refuses what cannot be one class, and every output loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from attestation.errors import EventLogError, PolicyConfigError
from attestation.eventlog import ReplayMismatchError, parse_event_log
from attestation.golden import capture_class, document, leading_comments, merge_class, secure_boot_state
from attestation.refvalues import ReferencePolicy, ReferenceValueViolationError
from attestation.tpm2.constants import HashAlg
from localpeers.simboot import boot_events, write_event_log

BANKS = (HashAlg.SHA256, HashAlg.SHA1)
DATA = Path(__file__).resolve().parents[2] / "data" / "eventlogs"


def _boot(**kwargs: Any) -> tuple[dict[int, bytes], Any]:
    log = parse_event_log(write_event_log(boot_events(**kwargs), BANKS))
    return dict(log.replay()[HashAlg.SHA256]), log


def test_a_captured_class_loads_and_pins_the_secure_boot_state() -> None:
    pcrs, log = _boot()
    cls = capture_class(pcrs, HashAlg.SHA256, log)
    loaded = ReferencePolicy.from_mapping({"device_classes": {"gw": cls}}, source="t").device_class("gw")
    loaded.check_pcrs({HashAlg.SHA256: pcrs}, log)
    assert loaded.event_log == "required"
    off_pcrs, off_log = _boot(secure_boot=False)
    assert secure_boot_state(log) == "enabled"
    assert secure_boot_state(off_log) == "disabled"
    # PCR 7 aside, the rule alone refuses a boot with Secure Boot off
    relaxed = dict(cls, pcrs={0: [pcrs[0].hex()]})
    with pytest.raises(ReferenceValueViolationError, match="required rule"):
        ReferencePolicy.from_mapping({"device_classes": {"gw": relaxed}}, source="t").device_class("gw").check_pcrs(
            {HashAlg.SHA256: off_pcrs}, off_log
        )


def test_capture_refuses_a_log_that_does_not_replay_naming_the_pcr() -> None:
    pcrs, _ = _boot()
    _, other = _boot(kernel=b"linux 6.13")
    with pytest.raises(ReplayMismatchError, match=r"TPM's PCR 4 \(sha256\)") as caught:
        capture_class(pcrs, HashAlg.SHA256, other)
    assert caught.value.pcr == 4


def test_capture_refuses_a_bank_the_log_has_not() -> None:
    pcrs, _ = _boot()
    only_sha1 = parse_event_log(write_event_log(boot_events(), (HashAlg.SHA1,)))
    with pytest.raises(EventLogError, match="no sha256 digests"):
        capture_class(pcrs, HashAlg.SHA256, only_sha1)


def test_merge_adds_alternatives_and_refuses_what_cannot_be_one_class() -> None:
    pcrs, log = _boot()
    newer_pcrs, newer_log = _boot(bootloader=b"shim 16.0")
    merged = merge_class(
        capture_class(pcrs, HashAlg.SHA256, log), capture_class(newer_pcrs, HashAlg.SHA256, newer_log), "f"
    )
    assert merged["pcrs"][4] == [pcrs[4].hex(), newer_pcrs[4].hex()]
    assert merged["pcrs"][0] == [pcrs[0].hex()]  # the same value once
    assert len(merged["events"]["require"]) == 1
    text = document({"gw": merged}, ["# header\n"], source="t")
    cls = ReferencePolicy.from_mapping(yaml.safe_load(text), source="t").device_class("gw")
    cls.check_pcrs({HashAlg.SHA256: pcrs}, log)
    cls.check_pcrs({HashAlg.SHA256: newer_pcrs}, newer_log)

    off_pcrs, off_log = _boot(secure_boot=False)
    with pytest.raises(PolicyConfigError, match="another Secure Boot state"):
        merge_class(merged, capture_class(off_pcrs, HashAlg.SHA256, off_log), "f: device_classes.gw")
    with pytest.raises(PolicyConfigError, match="capture with --pcrs 0,4"):
        merge_class({"pcrs": {0: "any", 4: ["00" * 32]}}, capture_class(pcrs, HashAlg.SHA256, log), "f")
    with pytest.raises(PolicyConfigError, match="capture with --bank sha1"):
        merge_class({"pcr_bank": "sha1", "pcrs": {0: ["00" * 20]}}, capture_class(pcrs, HashAlg.SHA256, log), "f")


def test_document_refuses_what_the_hub_would_refuse() -> None:
    with pytest.raises(PolicyConfigError, match="at least one PCR"):
        document({"gw": {"pcrs": {}}}, [], source="out.yaml")


def test_leading_comments_are_kept_and_later_ones_reported() -> None:
    head, lost = leading_comments("# ours\n\n# second\ndevice_classes:\n  a: 1 # inline\n")
    assert head == ["# ours\n", "# second\n"]
    assert lost


def test_descriptions_of_real_firmware_events() -> None:
    log = parse_event_log((DATA / "event-gce-ubuntu-2104-log.bin").read_bytes())
    shown = {e.description for e in log.events}
    assert {"GCE Virtual Firmware v1", "\\EFI\\ubuntu\\shimx64.efi", "\\EFI\\ubuntu\\grubx64.efi"} <= shown
    assert "SecureBoot = 00" in shown
