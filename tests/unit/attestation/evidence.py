"""Replayable real TPM evidence (tests/data/tpm/quotes.json, recorded from swtpm)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from attestation.tpm2.constants import HashAlg

DATA = Path(__file__).resolve().parents[2] / "data" / "tpm" / "quotes.json"


@cache
def recorded() -> dict[str, Any]:
    return dict(json.loads(DATA.read_text()))


def quote_case(name: str) -> dict[str, Any]:
    case = dict(recorded()["quotes"][name])
    case["pcr_values"] = {
        HashAlg.from_label(bank): {int(i): bytes.fromhex(v) for i, v in values.items()}
        for bank, values in case["pcrs"].items()
    }
    for field in ("ak_public", "ak_name", "attest", "signature"):
        case[field] = bytes.fromhex(case[field])
    case["nonce"] = bytes.fromhex(recorded()["nonce"])
    return case


CASES = ("ecc-sha256", "rsa-sha256", "ecc-sha1-sha256", "rsapss-sha256")
