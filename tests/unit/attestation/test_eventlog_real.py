"""Real firmware event logs (from the tpm2-tools test fixtures) replay to what tpm2-tools itself computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attestation.errors import EventLogError
from attestation.eventlog import parse_event_log
from attestation.tpm2.constants import HashAlg

DATA = Path(__file__).resolve().parents[2] / "data" / "eventlogs"
ORACLE = json.loads((DATA / "expected-pcrs.json").read_text())["logs"]


#: its Spec ID event declares 4 bytes of vendor data that lie outside the event's declared size
INCONSISTENT = {"specid-vendordata.bin"}


@pytest.mark.parametrize("name", sorted(set(ORACLE) - INCONSISTENT))
def test_replay_matches_tpm2_tools(name: str) -> None:
    log = parse_event_log((DATA / name).read_bytes())
    replayed = log.replay()
    expected = ORACLE[name]
    for bank, pcrs in expected.items():
        ours = replayed[HashAlg.from_label(bank)]
        assert {str(i): v.hex() for i, v in ours.items()} == pcrs, f"{name} {bank}"
    # and nothing we replay is absent from the oracle
    assert {b.label for b, v in replayed.items() if v} <= set(expected)


def test_real_logs_carry_named_events() -> None:
    log = parse_event_log((DATA / "event-arch-linux.bin").read_bytes())
    names = {e.type_name for e in log.events}
    assert {"EV_SEPARATOR", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_BOOT_SERVICES_APPLICATION"} <= names
    variables = {e.efi_variable_name for e in log.events if e.efi_variable_name}
    assert "SecureBoot" in variables


def test_header_whose_vendor_data_overruns_its_size_is_refused() -> None:
    with pytest.raises(EventLogError, match="truncated at offset 73"):
        parse_event_log((DATA / "specid-vendordata.bin").read_bytes())
