"""Record real TPM evidence from swtpm for the unit tests and benchmarks (replayed without a TPM).

Run: .venv/bin/python tests/data/tpm/record_evidence.py   (needs swtpm; rewrites quotes.json)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from attestation.device import TPMDevice  # noqa: E402
from localpeers.simboot import boot_events, measure_boot  # noqa: E402
from localpeers.swtpm import SoftwareTPMFactory  # noqa: E402
from attestation.tpm2.constants import HashAlg  # noqa: E402

NONCE = bytes(range(32))
CASES = [
    ("ecc-sha256", "ecc", {HashAlg.SHA256: [0, 1, 2, 3, 4, 5, 6, 7, 10, 16]}),
    ("rsa-sha256", "rsa", {HashAlg.SHA256: [0, 1, 2, 3, 4, 5, 6, 7, 10, 16]}),
    ("ecc-sha1-sha256", "ecc", {HashAlg.SHA1: [0, 4, 7], HashAlg.SHA256: [0, 4, 7]}),
    ("rsapss-sha256", "rsapss", {HashAlg.SHA256: [0, 4, 7]}),
]


def main() -> None:
    banks = (HashAlg.SHA256, HashAlg.SHA1)
    factory = SoftwareTPMFactory(Path(tempfile.mkdtemp()))
    tpm = factory.start("recorder")
    out: dict[str, object] = {
        "swtpm": subprocess.run(["swtpm", "--version"], capture_output=True, text=True).stdout.strip(),
        "nonce": NONCE.hex(),
        "quotes": {},
    }
    try:
        with TPMDevice(tpm.tcti) as device:
            log = measure_boot(device, boot_events(), banks)
            ek = device.endorsement_key("rsa")
            out["ek_public"] = ek.public.hex()
            out["ek_certificate"] = (ek.certificate or b"").hex()
            out["event_log"] = log.hex()
        for name, ak_kind, selection in CASES:
            with TPMDevice(tpm.tcti) as device:
                ak = device.create_attestation_key(ak_kind)  # type: ignore[arg-type]
                quote = device.quote(selection, NONCE)
                out["quotes"][name] = {  # type: ignore[index]
                    "ak_public": ak.public.hex(),
                    "ak_name": ak.name.hex(),
                    "attest": quote.attest.hex(),
                    "signature": quote.signature.hex(),
                    "pcrs": {b.label: {str(i): v.hex() for i, v in vals.items()} for b, vals in quote.pcr_values.items()},
                }
    finally:
        tpm.stop()
    Path(__file__).with_name("quotes.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
