"""The chart ships no key material: not in values, examples, templates or its README. A key in an example is
a key a user following it would trust (the syncer and the webhook believe whatever it signed)."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.chart.support import REPO

pytestmark = pytest.mark.integration

#: an armoured block (a PEM with its body), or its body alone: a long base64 run with both cases of letters and
#: a digit or + or / (hex digests, such as a PCR of zeros, have one case; camelCase words have no digit)
PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----[\s\\n\"|]*[A-Za-z0-9+/=]{16}")
BASE64_RUN = re.compile(r"(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{40,}")


def key_material(text: str) -> list[str]:
    return [m.group(0)[:60] for pattern in (PEM_BLOCK, BASE64_RUN) for m in pattern.finditer(text)]


def test_no_file_under_charts_holds_key_material() -> None:
    files = [p for p in (REPO / "charts").rglob("*") if p.is_file()]
    assert len(files) >= 10, files
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := key_material(p.read_text()))}
    assert not found, f"key material in the chart (users would trust it): {found}"


def test_the_detector_finds_a_key_pasted_as_the_old_example_did() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    indented = "syncer:\n  verificationKeys:\n    ci-1: |\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    assert key_material(indented)
    body = "".join(pem.splitlines()[1:-1])
    assert key_material(f'revocationKey: "{body}"')
    assert not key_material('{"pattern": "-----BEGIN PUBLIC KEY-----"}')
    assert not key_material('pcrs: {0: ["' + "0" * 64 + '"]}')
    assert not key_material("preferredDuringSchedulingIgnoredDuringExecution")
