from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attestation.errors import EventLogError, PolicyConfigError, ReferenceValueError
from attestation.eventlog import parse_event_log
from attestation.quote import VerifiedQuote
from attestation.refvalues import ReferencePolicy, ReferenceValueViolationError
from attestation.tpm2.constants import HashAlg
from localpeers.simboot import boot_events, write_event_log

BANKS = (HashAlg.SHA256, HashAlg.SHA1)
GOLDEN = parse_event_log(write_event_log(boot_events(), BANKS))
PCRS = GOLDEN.replay()[HashAlg.SHA256]


def _quote(pcrs: dict[int, bytes]) -> VerifiedQuote:
    return VerifiedQuote(b"", b"", {HashAlg.SHA256: pcrs}, 0, 0, 0, 0, ((HashAlg.SHA256, tuple(sorted(pcrs))),))


def _policy(**cls: Any) -> ReferencePolicy:
    base: dict[str, Any] = {"pcr_bank": "sha256", "pcrs": {0: [PCRS[0].hex()], 4: [PCRS[4].hex()], 7: "any"}}
    base.update(cls)
    return ReferencePolicy.from_mapping({"device_classes": {"gw": base}}, source="test")


def test_golden_boot_passes_and_selection_follows_the_file() -> None:
    policy = _policy(event_log="required", events={"require": [{"pcr": 7, "variable": "SecureBoot"}]})
    gw = policy.device_class("gw")
    assert gw.selection() == {HashAlg.SHA256: (0, 4, 7)}
    gw.check(_quote(dict(PCRS)), GOLDEN)


def test_every_violation_is_listed() -> None:
    bad = dict(PCRS) | {0: b"\x01" * 32, 4: b"\x02" * 32}
    with pytest.raises(ReferenceValueViolationError) as caught:
        _policy().device_class("gw").check(_quote(bad), None)
    assert len(caught.value.violations) == 2
    assert "PCR 0 (sha256): got 0101" in str(caught.value)
    assert "PCR 4 (sha256)" in str(caught.value)


def test_unquoted_pcr_and_missing_required_log() -> None:
    with pytest.raises(ReferenceValueError, match="PCR 7 \\(sha256\\) was not quoted"):
        _policy().device_class("gw").check(_quote({0: PCRS[0], 4: PCRS[4]}), None)
    with pytest.raises(ReferenceValueError, match="event log is required"):
        _policy(event_log="required").device_class("gw").check(_quote(dict(PCRS)), None)


def test_event_rules_require_and_forbid() -> None:
    off = parse_event_log(write_event_log(boot_events(secure_boot=False), BANKS))
    pcrs = dict(PCRS) | {7: off.replay()[HashAlg.SHA256][7]}
    data = next(e for e in GOLDEN.events if e.efi_variable_name == "SecureBoot").data
    import hashlib

    rule = {"pcr": 7, "type": "EV_EFI_VARIABLE_DRIVER_CONFIG", "data_sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(ReferenceValueError, match="required rule"):
        _policy(events={"require": [rule]}).device_class("gw").check(_quote(pcrs), off)
    kernel = GOLDEN.events_for(4)[-1].digests[HashAlg.SHA256].hex()
    with pytest.raises(ReferenceValueError, match="forbidden rule"):
        _policy(events={"forbid": [{"pcr": 4, "digest": kernel}]}).device_class("gw").check(_quote(dict(PCRS)), GOLDEN)


def test_log_is_replayed_before_rules_are_believed() -> None:
    lying = parse_event_log(write_event_log(boot_events(kernel=b"x"), BANKS))
    with pytest.raises(EventLogError):
        _policy().device_class("gw").check(_quote(dict(PCRS)), lying)


def test_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(ReferenceValueError, match=r"\['gw'\]"):
        _policy().device_class("toaster")


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ({"pcrs": {}}, "at least one PCR"),
        ({"pcrs": {0: ["abcd"]}}, "2 bytes"),
        ({"pcrs": {0: ["zz"]}}, "not hex"),
        ({"pcrs": {30: "any"}}, "out of range"),
        ({"pcrs": {0: "any"}, "event_log": "maybe"}, "event_log"),
        ({"pcrs": {0: "any"}, "colour": "red"}, "unknown keys"),
        ({"pcrs": {0: "any"}, "pcr_bank": "md5"}, "pcr_bank"),
        ({"pcrs": {0: "any"}, "pcr_bank": "sha1"}, "allow_sha1_quotes: true"),
        ({"pcrs": {0: "any"}, "allow_sha1_quotes": "yes"}, "expected true or false"),
        ({"pcrs": {0: "any"}, "events": {"require": [{"type": "EV_MADE_UP"}]}}, "unknown event type"),
        ({"pcrs": {0: "any"}, "events": {"require": [{"pcr": 1, "colour": 2}]}}, "unknown keys"),
    ],
)
def test_mistakes_in_the_file_are_caught_at_load(cls: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        ReferencePolicy.from_mapping({"device_classes": {"gw": cls}}, source="refvalues.yaml")


def test_load_yaml_and_example_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("device_classes:\n  gw:\n    pcrs:\n      0: any\n")
    assert ReferencePolicy.load(path).device_class("gw").pcrs == {0: None}
    example = Path(__file__).resolve().parents[3] / "policies" / "reference-values" / "example.yaml"
    assert "edge-gateway" in ReferencePolicy.load(example).classes
    path.write_text("device_classes: [")
    with pytest.raises(PolicyConfigError, match="not valid YAML"):
        ReferencePolicy.load(path)
