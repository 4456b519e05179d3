"""`trustctl refvalues capture|check` against real swtpms after a simulated measured boot, and the hub loading
what capture wrote, unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from attestation.refvalues import ReferencePolicy
from localpeers.hub import GOLDEN_BANKS, golden_reference_values, running_hub
from localpeers.simboot import boot_events, write_event_log
from tests.integration.conftest import BootedDevice
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

TAMPERED_BOOTLOADER = b"shim+grub 15.8 (patched by an attacker)"


def _log(device: BootedDevice, path: Path) -> Path:
    path.write_bytes(device.event_log)
    return path


def _capture(device: BootedDevice, log: Path, out: Path, *extra: str) -> int:
    argv = ["refvalues", "capture", "--device-class", "edge-gateway", "--tpm", device.tcti, "--event-log", str(log)]
    return trustctl([*argv, "--out", str(out), *extra])


def _enroll(hub_url: str, ca: Path, device: BootedDevice, log: Path, out: Path, node: str) -> int:
    argv = ["enroll", "--hub", hub_url, "--ca-bundle", str(ca), "--tpm", device.tcti, "--device-class", "edge-gateway"]
    return trustctl([*argv, "--site", "lab", "--node", node, "--event-log", str(log), "--out", str(out)])


def test_captured_values_are_loaded_by_the_hub_which_enrolls_the_golden_device_and_refuses_a_tampered_one(
    golden_device: BootedDevice,
    tampered_device: BootedDevice,
    ek_roots: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "reference-values.yaml"
    assert _capture(golden_device, _log(golden_device, tmp_path / "golden.bin"), out) == 0
    text = out.read_text()
    assert text.startswith("# Reference values per device class")
    assert f"TPM {golden_device.tcti}" in text
    assert "Secure Boot enabled" in text
    cls = ReferencePolicy.load(out).device_class("edge-gateway")
    replayed = golden_device_replay()
    assert {i: set(v or ()) for i, v in cls.pcrs.items()} == {i: {replayed[i]} for i in range(8)}
    assert cls.event_log == "required"
    assert [r.variable for r in cls.require] == ["SecureBoot"]
    capsys.readouterr()

    with running_hub(tmp_path / "hub", ek_roots=ek_roots, reference_values_file=out) as hub:
        assert out.read_text() == text  # the hub read it as written
        assert _enroll(hub.url, hub.ca_bundle, golden_device, tmp_path / "golden.bin", tmp_path / "g", "gw-1") == 0
        tampered_log = _log(tampered_device, tmp_path / "tampered.bin")
        assert _enroll(hub.url, hub.ca_bundle, tampered_device, tampered_log, tmp_path / "t", "gw-2") == 1
        assert "PCR 4 (sha256)" in capsys.readouterr().err
        assert [d.spiffe_id for d in hub.hub.store.devices()] == ["spiffe://edge.example/site/lab/node/gw-1"]


def golden_device_replay() -> dict[int, bytes]:
    from attestation.eventlog import parse_event_log
    from attestation.tpm2.constants import HashAlg

    return parse_event_log(write_event_log(boot_events(), GOLDEN_BANKS)).replay()[HashAlg.SHA256]


def test_capture_refuses_a_log_that_does_not_replay_to_the_tpm_naming_the_pcr(
    golden_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lying = tmp_path / "other-boot.bin"
    lying.write_bytes(write_event_log(boot_events(bootloader=TAMPERED_BOOTLOADER), GOLDEN_BANKS))
    out = tmp_path / "rv.yaml"
    assert _capture(golden_device, lying, out) == 1
    err = capsys.readouterr().err
    assert "does not replay to the TPM's PCR 4 (sha256)" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_file_is_refused_without_merge_and_merge_adds_one_of_each_pcr_keeping_the_rest(
    golden_device: BootedDevice, tampered_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rv.yaml"
    legacy = golden_reference_values()["device_classes"]["legacy-sha1"]  # type: ignore[index]
    out.write_text(
        "# our fleet's reference values, owned by the platform team\n"
        + yaml.safe_dump({"device_classes": {"legacy-sha1": legacy}})
    )
    before = out.read_text()
    golden_log = _log(golden_device, tmp_path / "golden.bin")
    assert _capture(golden_device, golden_log, out) == 2
    assert "exists; add --merge" in capsys.readouterr().err
    assert out.read_text() == before

    assert _capture(golden_device, golden_log, out, "--merge") == 0
    # a second golden device with another bootloader (a newer firmware): PCR 4 may now be one of two values
    assert _capture(tampered_device, _log(tampered_device, tmp_path / "second.bin"), out, "--merge") == 0
    text = out.read_text()
    assert text.startswith("# our fleet's reference values, owned by the platform team\n")
    assert text.count("# edge-gateway: golden device") == 2
    policy = ReferencePolicy.load(out)
    assert set(policy.classes) == {"legacy-sha1", "edge-gateway"}
    assert (
        policy.classes["legacy-sha1"].pcrs
        == ReferencePolicy.from_mapping(golden_reference_values(), source="golden").classes["legacy-sha1"].pcrs
    )
    pcrs = policy.classes["edge-gateway"].pcrs
    assert len(pcrs[4] or ()) == 2
    assert all(len(pcrs[i] or ()) == 1 for i in (0, 1, 2, 3, 5, 6, 7))

    # other PCRs than the class lists: refused, file unchanged
    merged = out.read_text()
    assert _capture(golden_device, golden_log, out, "--merge", "--pcrs", "0,4") == 1
    assert "capture with --pcrs 0,1,2,3,4,5,6,7" in capsys.readouterr().err
    assert out.read_text() == merged


@pytest.fixture
def golden_file(golden_device: BootedDevice, tmp_path: Path) -> Path:
    out = tmp_path / "golden-rv.yaml"
    assert _capture(golden_device, _log(golden_device, tmp_path / "golden.bin"), out) == 0
    return out


def _check(rv: Path, *extra: str) -> list[str]:
    return ["refvalues", "check", "--reference-values", str(rv), "--device-class", "edge-gateway", *extra]


def test_check_accepts_the_golden_boot_and_says_the_log_agrees_with_the_tpm(
    golden_file: Path, golden_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "golden.bin"
    assert trustctl([*_check(golden_file, "--event-log", str(log), "--tpm", golden_device.tcti), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["accepted"] is True
    assert view["log_agrees_with_pcrs"] is True
    assert view["violations"] == []
    assert trustctl(_check(golden_file, "--event-log", str(log))) == 0
    assert "would be accepted" in capsys.readouterr().out


def test_check_of_a_tampered_bootloader_names_pcr_4_and_the_event_that_extended_it(
    golden_file: Path, tampered_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tampered_device, tmp_path / "tampered.bin")
    assert trustctl([*_check(golden_file, "--event-log", str(log), "--tpm", tampered_device.tcti), "--json"]) == 1
    captured = capsys.readouterr()
    view = json.loads(captured.out)
    assert view["accepted"] is False
    assert view["log_agrees_with_pcrs"] is True
    assert [m["pcr"] for m in view["mismatches"]] == [4]
    (pcr4,) = view["mismatches"]
    assert pcr4["value"] == pcr4["replayed"]
    assert pcr4["value"] not in pcr4["allowed"]
    bad_digest = hashlib.sha256(TAMPERED_BOOTLOADER).hexdigest()
    changed = [e for e in pcr4["events"] if e["digest"] == bad_digest]
    assert changed
    assert changed[0]["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert changed[0]["description"] == "\\EFI\\BOOT\\BOOTX64.EFI"
    assert "would refuse this boot: PCR 4 (sha256)" in captured.err

    assert trustctl(_check(golden_file, "--event-log", str(log))) == 1
    out = capsys.readouterr().out
    assert "PCR 4 (sha256)" in out
    assert f"EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\BOOT\\BOOTX64.EFI sha256:{bad_digest}" in out


def test_check_says_a_log_that_disagrees_with_the_tpm_is_suspect(
    golden_file: Path, golden_device: BootedDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(write_event_log(boot_events(bootloader=TAMPERED_BOOTLOADER), GOLDEN_BANKS))
    assert trustctl(_check(golden_file, "--event-log", str(other), "--tpm", golden_device.tcti)) == 1
    out = capsys.readouterr().out
    assert "DISAGREES with these PCR values: the log, not the boot, is suspect" in out
    assert "PCR 4 (sha256)" in out
