"""A hostile boot event log given to `trustctl refvalues check` or `capture`: the log is the device's word, and
an operator runs these tools on logs copied from devices they do not trust yet.

Each limit refuses (never truncates, never parses the first N events and judges those), in one stderr line
naming the file, exit 1, no traceback; text from the log never reaches the terminal as control characters.
The real CLI entry point runs in a real process; capture is refused on the log before any TPM is opened.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.eventlog import MAX_EVENT_DATA, MAX_EVENTS, MAX_LOG_BYTES
from attestation.tpm2.constants import HashAlg
from localpeers.hub import GOLDEN_BANKS, golden_reference_values
from localpeers.simboot import BootEvent, boot_events, write_event_log

TRUSTCTL = Path(sys.executable).parent / "trustctl"
#: no TPM listens here: capture must refuse the log before it would need one
NO_TPM = "swtpm:host=127.0.0.1,port=1"


@pytest.fixture
def reference_values(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "rv.yaml"
    path.write_text(yaml.safe_dump(golden_reference_values()))
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TRUSTCTL), *argv], capture_output=True, text=True, timeout=120, check=False)


def _both(rv: Path, log: Path) -> list[subprocess.CompletedProcess[str]]:
    check = _run(
        "refvalues", "check", "--reference-values", str(rv), "--device-class", "edge-gateway", "--event-log", str(log)
    )
    capture = _run("refvalues", "capture", "--device-class", "x", "--tpm", NO_TPM, "--event-log", str(log))
    return [check, capture]


def _assert_refused(results: list[subprocess.CompletedProcess[str]], log: Path, reason: str) -> None:
    for result in results:
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one line, no traceback
        assert str(log) in lines[0], lines[0]
        assert reason in lines[0], lines[0]
        assert result.stdout == ""  # nothing judged, nothing written


def _header() -> bytes:
    return write_event_log([], GOLDEN_BANKS)


def _event(pcr: int, event_type: int, data: bytes) -> bytes:
    digests = b"".join(struct.pack("<H", int(b)) + b.digest(data) for b in GOLDEN_BANKS)
    return struct.pack("<III", pcr, event_type, len(GOLDEN_BANKS)) + digests + struct.pack("<I", len(data)) + data


def test_more_events_than_the_limit_are_refused_not_judged_on_the_first_ones(
    reference_values: Path, tmp_path: Path
) -> None:
    log = tmp_path / "many.bin"
    one = _event(4, 0x0D, b"")
    log.write_bytes(_header() + one * (MAX_EVENTS + 1))
    assert log.stat().st_size < MAX_LOG_BYTES  # it is the count that is refused
    _assert_refused(_both(reference_values, log), log, f"more than {MAX_EVENTS} events")


def test_an_event_claiming_a_huge_size_is_refused(reference_values: Path, tmp_path: Path) -> None:
    log = tmp_path / "huge-event.bin"
    digests = b"".join(struct.pack("<H", int(b)) + bytes(b.digest_size) for b in GOLDEN_BANKS)
    log.write_bytes(_header() + struct.pack("<III", 4, 0x0D, 2) + digests + struct.pack("<I", 0xFFFFFFF0))
    _assert_refused(_both(reference_values, log), log, f"exceeds {MAX_EVENT_DATA}")


def test_a_log_file_larger_than_the_limit_is_refused_without_being_read_whole(
    reference_values: Path, tmp_path: Path
) -> None:
    log = tmp_path / "endless.bin"
    with log.open("wb") as handle:
        handle.write(write_event_log(boot_events(), GOLDEN_BANKS))
        handle.truncate(64 * MAX_LOG_BYTES)  # sparse: 256 MiB that a careless reader would load
    _assert_refused(_both(reference_values, log), log, f"larger than {MAX_LOG_BYTES} bytes")


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_a_truncated_log_is_a_clear_error(reference_values: Path, tmp_path: Path, cut: int) -> None:
    log = tmp_path / "truncated.bin"
    log.write_bytes(write_event_log(boot_events(), GOLDEN_BANKS)[:-cut])
    _assert_refused(_both(reference_values, log), log, "truncated")


def test_garbage_is_a_clear_error(reference_values: Path, tmp_path: Path) -> None:
    log = tmp_path / "garbage.bin"
    log.write_bytes(hashlib.sha512(b"not an event log").digest() * 3)
    for result in _both(reference_values, log):
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert str(log) in lines[0]
        assert "Traceback" not in result.stderr


def _image_load_event(path: str) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length, then a device path
    of one file-path node (type 4, subtype 4, UTF-16) and the end node."""
    name = path.encode("utf-16-le") + b"\x00\x00"
    device_path = struct.pack("<BBH", 4, 4, 4 + len(name)) + name + bytes([0x7F, 0xFF, 4, 0])
    return struct.pack("<QQQQ", 0x1000, 0x2000, 0, len(device_path)) + device_path


@pytest.mark.parametrize("form", ["image-path", "raw-bytes"])
def test_terminal_escapes_in_an_event_never_reach_the_terminal(
    reference_values: Path, tmp_path: Path, form: str
) -> None:
    """A device's log names its bootloader; a hostile one names it with escape sequences (clear the screen,
    rewrite the verdict line). `check` shows a file path with control characters replaced and cut short, and
    other bytes as hex."""
    text = "\x1b[2J\x1b[1;1Hwould be accepted\r\n\x07" + "A" * 500
    data = _image_load_event(text) if form == "image-path" else text.encode()
    events = [*boot_events()[:-1], BootEvent(4, 0x80000003, data, b"patched kernel")]
    log = tmp_path / "escapes.bin"
    log.write_bytes(write_event_log(events, GOLDEN_BANKS))
    argv = ["refvalues", "check", "--reference-values", str(reference_values), "--device-class", "edge-gateway"]
    human = _run(*argv, "--event-log", str(log))
    assert human.returncode == 1
    for control in ("\x1b", "\x07", "\r"):
        assert control not in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) < 400  # the 500 A's are cut
    view = json.loads(_run(*argv, "--event-log", str(log), "--json").stdout)
    (pcr4,) = view["mismatches"]
    patched = HashAlg.SHA256.digest(b"patched kernel").hex()
    (shown,) = [e["description"] for e in pcr4["events"] if e["digest"] == patched]
    assert "\x1b" not in shown
    if form == "image-path":
        assert shown.startswith("?[2J?[1;1Hwould be accepted??")
        assert shown.endswith("…")
        assert "?[2J?[1;1Hwould be accepted" in human.stdout
    else:  # not text: its first bytes in hex
        assert shown == f"{text.encode()[:16].hex()}… ({len(text)} bytes)"
