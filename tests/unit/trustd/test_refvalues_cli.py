"""`trustctl refvalues`'s own parsing: PCR lists and PCR value files (ours, and tpm2_pcrread's output)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from attestation.tpm2.constants import HashAlg
from edgetrust._internal.cli import UsageError
from trustd.cli.refvalues import _pcr_file, _pcr_list


def test_pcr_lists_and_files() -> None:
    assert _pcr_list("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(argparse.ArgumentTypeError):
        _pcr_list("0-24")
    with pytest.raises(argparse.ArgumentTypeError):
        _pcr_list("seven")


def test_pcr_files_in_our_shape_and_tpm2_pcrread_s(tmp_path: Path) -> None:
    ours = tmp_path / "pcrs.json"
    ours.write_text('{"sha256": {"4": "' + "ab" * 32 + '"}}')
    assert _pcr_file(ours) == {HashAlg.SHA256: {4: bytes.fromhex("ab" * 32)}}
    pcrread = tmp_path / "pcrread.yaml"
    pcrread.write_text("sha256:\n  0 : 0x" + "00" * 31 + "01\n  7 : 0x" + "FF" * 32 + "\n")
    assert _pcr_file(pcrread) == {HashAlg.SHA256: {0: bytes(31) + b"\x01", 7: b"\xff" * 32}}
    short = tmp_path / "short.yaml"
    short.write_text("sha256: {4: abcd}\n")
    with pytest.raises(UsageError, match=r"short.yaml: sha256.4: index outside 0-23 or not a sha256 digest"):
        _pcr_file(short)
