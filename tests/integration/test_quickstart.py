"""docs/quickstart.md, run as written: its ```sh blocks, in order, as one bash script.

The page is what a new user follows with nothing else; if a command, a flag or an output it promises changes,
this fails. The script runs in an empty temporary directory (the page must not assume the repository root: it
takes the checkout from $REPO), with the venv and the Go peers on PATH, and a trap that runs the page's own
"stop everything" block also when a step fails; whatever survives that is killed by the pid files the page
wrote. ```text blocks are the page's expected output and are never run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localpeers.peers import REPO, peer, peers_cache
from localpeers.swtpm import INSTALL_HINT

pytestmark = pytest.mark.integration

PAGE = REPO / "docs" / "quickstart.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: the whole page on a loaded two-core machine takes about a minute; a hung step must not hang CI
_TIMEOUT_S = 300


def sh_blocks(text: str) -> list[str]:
    """The page's ```sh blocks, in order (```text and ```yaml blocks are output and examples, never run)."""
    return [body for lang, body in _BLOCK.findall(text) if lang == "sh"]


def _require_tools() -> None:
    missing = [t for t in ("swtpm", "swtpm_setup", "swtpm_localca", "openssl", "curl") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: {INSTALL_HINT} openssl curl", pytrace=False)
    for name in ("opa", "etcd", "kube-apiserver", "kubectl"):
        peer(name)  # fails with `hack/install-peers <name>` when it is not built


def _kill_leftovers(workdir: Path) -> list[str]:
    """What the page's stop block left running: ends it by its pid file, and names it (the test then fails)."""
    survivors = []
    for pid_file in sorted((workdir / "qs").rglob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            continue
        survivors.append(pid_file.name)
        try:
            if pid_file.name == "cluster.pid":
                os.killpg(pid, signal.SIGKILL)  # the cluster's supervisor leads etcd's and kube-apiserver's group
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors


def _logs(workdir: Path) -> str:
    """The last lines of every log the page's servers wrote, for a failure message."""
    tails = []
    for log in sorted((workdir / "qs").rglob("*.log")):
        lines = log.read_text(errors="replace").strip().splitlines()[-15:]
        tails.append(f"\n--- {log.relative_to(workdir)}\n" + "\n".join(lines))
    return "".join(tails)


def test_the_page_lists_its_steps_and_its_stop_block_last() -> None:
    blocks = sh_blocks(PAGE.read_text())
    assert len(blocks) >= 14, f"docs/quickstart.md has only {len(blocks)} sh blocks"
    assert "localpeers.cluster down" in blocks[-1]
    assert "hub.pid" in blocks[-1]


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    _require_tools()
    blocks = sh_blocks(PAGE.read_text())
    stop_block = blocks[-1]
    script = "\n".join(
        [
            "set -euo pipefail",
            # on any exit: the page's own stop block, tolerant of what never started
            f"cleanup() {{ set +e; {{\n{stop_block}\n}} >/dev/null 2>&1; }}",
            "trap cleanup EXIT",
            *(f"echo '+++ block {i}'\n{block}" for i, block in enumerate(blocks, 1)),
        ]
    )
    (tmp_path / "quickstart.sh").write_text(script)
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "REPO": str(REPO),
        "PATH": os.pathsep.join([str(venv_bin), str(peers_cache() / "bin"), os.environ.get("PATH", "")]),
        "KUBECONFIG": "/nonexistent",  # the page sets its own; never the user's cluster
    }
    output = tmp_path / "output.txt"
    try:
        # stdout to a file, not a pipe: swtpm --daemon and the background servers inherit it
        with output.open("wb") as out:
            done = subprocess.run(
                ["bash", str(tmp_path / "quickstart.sh")],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=_TIMEOUT_S,
                check=False,
            )
    finally:
        survivors = _kill_leftovers(tmp_path)
    text = output.read_text(errors="replace")
    assert done.returncode == 0, f"the page failed (exit {done.returncode}):\n{text[-6000:]}{_logs(tmp_path)}"
    assert not survivors, f"still running after the page's stop block: {survivors}"
    assert "enrolled as spiffe://retail.example/site/store-1/node/gw-01" in text, text
    assert re.search(r"PCR 4 \(sha256\): got [0-9a-f]+.*refused \(exit 1\)", text, re.DOTALL), text
    assert "spiffe://retail.example/site/store-1/node/gw-02" not in text, text
    assert re.search(r"denied the request: .*\[require_team_label\] pod web has no team label", text), text
    assert "refused (exit 1)" in text, text
    assert "pod/web created" in text, text
    assert re.search(r"^allow-web\s+app=web", text, re.MULTILINE), text
    assert re.search(r"^default-deny\s", text, re.MULTILINE), text
    assert re.search(r"^web\s+0/1\s+Pending", text, re.MULTILINE), text
    assert "revision 000000000001-quickstart-1: complete" in text, text
