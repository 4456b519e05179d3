"""Record, for each real event log here, the PCR values tpm2-tools' own replay prints (an independent oracle).

Run: python tests/data/eventlogs/record_oracle.py   (needs tpm2_eventlog from Debian's tpm2-tools; rewrites
expected-pcrs.json). The tests then compare our replay with these values without needing the tool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    expected: dict[str, dict[str, dict[str, str]]] = {}
    for log in sorted(HERE.glob("*.bin")):
        out = subprocess.run(["tpm2_eventlog", str(log)], capture_output=True, text=True, check=True).stdout
        pcrs: dict[str, dict[str, str]] = {}
        bank = None
        for line in out[out.find("\npcrs:") :].splitlines()[1:]:
            if m := re.match(r"^  (\w+):$", line):
                bank = m.group(1)
                pcrs[bank] = {}
            elif (m := re.match(r"^\s+(\d+)\s*:\s*0x([0-9a-fA-F]+)$", line)) and bank:
                pcrs[bank][m.group(1)] = m.group(2).lower()
        expected[log.name] = pcrs
    version = subprocess.run(["tpm2_eventlog", "--version"], capture_output=True, text=True).stdout.strip()
    (HERE / "expected-pcrs.json").write_text(json.dumps({"oracle": version, "logs": expected}, indent=1) + "\n")


if __name__ == "__main__":
    main()
