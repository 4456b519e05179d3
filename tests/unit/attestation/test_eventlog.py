from __future__ import annotations

import struct

import pytest

from attestation.errors import EventLogError
from attestation.eventlog import parse_event_log, verify_replay
from attestation.quote import VerifiedQuote
from attestation.tpm2.constants import HashAlg
from localpeers.simboot import boot_events, write_event_log
from tests.unit.attestation.evidence import quote_case, recorded

BANKS = (HashAlg.SHA256, HashAlg.SHA1)


def _quote(pcrs: dict[HashAlg, dict[int, bytes]]) -> VerifiedQuote:
    selection = tuple((b, tuple(sorted(v))) for b, v in pcrs.items())
    return VerifiedQuote(b"", b"", pcrs, 0, 0, 0, 0, selection)


def test_recorded_log_replays_to_the_pcrs_the_real_tpm_quoted() -> None:
    log = parse_event_log(bytes.fromhex(recorded()["event_log"]))
    assert set(log.banks) == {HashAlg.SHA256, HashAlg.SHA1}
    quoted = quote_case("ecc-sha1-sha256")["pcr_values"]
    replayed = log.replay()
    for bank in (HashAlg.SHA1, HashAlg.SHA256):
        for index in (0, 4, 7):
            assert replayed[bank][index] == quoted[bank][index]
    verify_replay(log, _quote(quoted))


def test_events_are_named_and_variables_decoded() -> None:
    log = parse_event_log(write_event_log(boot_events(), BANKS))
    names = [e.type_name for e in log.events]
    assert names[0] == "EV_S_CRTM_VERSION"
    assert names.count("EV_SEPARATOR") == 8
    secure_boot = next(e for e in log.events if e.type_name == "EV_EFI_VARIABLE_DRIVER_CONFIG")
    assert secure_boot.efi_variable_name == "SecureBoot"
    assert str(secure_boot.efi_variable_guid) == "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert len(log.events_for(4)) == 3


def test_lying_log_is_caught() -> None:
    honest = parse_event_log(write_event_log(boot_events(), BANKS)).replay()
    lying = parse_event_log(write_event_log(boot_events(kernel=b"evil"), BANKS))
    with pytest.raises(EventLogError, match="PCR 4"):
        verify_replay(lying, _quote({HashAlg.SHA256: {4: honest[HashAlg.SHA256][4]}}))


def test_log_that_measures_none_of_the_quoted_pcrs() -> None:
    log = parse_event_log(write_event_log(boot_events(), BANKS))
    with pytest.raises(EventLogError, match="none of the quoted PCRs"):
        verify_replay(log, _quote({HashAlg.SHA256: {16: b"\x00" * 32}}))


def test_legacy_sha1_log() -> None:
    digest = b"\x11" * 20
    raw = struct.pack("<II", 0, 8) + digest + struct.pack("<I", 3) + b"abc"
    raw += struct.pack("<II", 4, 4) + digest + struct.pack("<I", 4) + b"\x00" * 4
    log = parse_event_log(raw)
    assert log.banks == (HashAlg.SHA1,)
    assert HashAlg.SHA1.digest(b"\x00" * 20 + digest) == log.replay()[HashAlg.SHA1][0]


def test_startup_locality_sets_pcr0_start() -> None:
    spec = write_event_log([], BANKS)
    locality = b"StartupLocality\x00\x03"
    no_action = struct.pack("<III", 0, 3, 2) + struct.pack("<H", 0x0B) + b"\x00" * 32
    no_action += struct.pack("<H", 0x04) + b"\x00" * 20 + struct.pack("<I", len(locality)) + locality
    log = parse_event_log(spec + no_action + write_event_log(boot_events()[:1], BANKS)[len(spec) :])
    assert log.startup_locality == 3
    event = log.events[-1]
    expected = HashAlg.SHA256.digest(b"\x00" * 31 + b"\x03" + event.digests[HashAlg.SHA256])
    assert log.replay()[HashAlg.SHA256][0] == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x00" * 10, "truncated"),
        (struct.pack("<II", 0, 3) + b"\x00" * 20 + struct.pack("<I", 0xFFFFFFFF), "exceeds"),
    ],
)
def test_malformed_logs(data: bytes, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        parse_event_log(data)


def test_event_extending_a_pcr_that_does_not_exist() -> None:
    log = write_event_log(boot_events()[:1], BANKS)
    spec_len = len(write_event_log([], BANKS))
    bad = log[:spec_len] + struct.pack("<I", 99) + log[spec_len + 4 :]
    with pytest.raises(EventLogError, match="PCR 99"):
        parse_event_log(bad)
