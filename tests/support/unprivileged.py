"""Run an attacker's code as another local user (uid/gid 65534, `nobody`), with the venv's packages.

Attacks on the node agent are made by an unprivileged local user, so they must run as one: the test process
is root, and anything it tried itself would prove nothing. The project's interpreter may live where nobody
can execute it (pyenv under /root), so the same Python version is looked for where nobody can run it; the
venv's site-packages (grpc, py-spiffe's messages) are put on its path. The code gets a JSON payload on stdin
and answers JSON on stdout.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import site
import subprocess
import sys
from typing import Any

import pytest

NOBODY = 65534
_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
_PRELUDE = "import sys; sys.path[:0] = {paths!r}\n"


_SETPRIV = "/usr/bin/setpriv"


def _as_nobody(argv: list[str], *, stdin: str = "", timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv as nobody through setpriv(1), not subprocess's user=/group=.

    With user=/group=, CPython must fork() (vfork cannot change ids), and a fork runs gRPC's atfork handlers in
    the child while the test process holds live Workload API streams: the child can die of SIGSEGV before it
    ever reaches exec. Through setpriv the ids change after exec, so subprocess uses vfork, which runs no atfork
    handler.
    """
    if not os.access(_SETPRIV, os.X_OK):
        pytest.fail(f"{_SETPRIV} is missing: apt-get install -y util-linux", pytrace=False)
    return subprocess.run(
        [_SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


@functools.cache
def _interpreter() -> str:
    candidates = [os.path.realpath(sys.executable), shutil.which(_VERSION, path="/usr/local/bin:/usr/bin")]
    for candidate in candidates:
        probe = _PRELUDE.format(paths=site.getsitepackages()) + "import grpc"
        try:
            if candidate and _as_nobody([candidate, "-I", "-c", probe]).returncode == 0:
                return candidate
        except OSError:  # not there at all
            continue
    pytest.fail(
        f"no {_VERSION} that uid {NOBODY} can run with this venv's packages (tried {candidates}): "
        f"apt-get install -y {_VERSION}",
        pytrace=False,
    )


def run_as_nobody(code: str, payload: object, *, timeout_s: float = 120) -> Any:
    """Run `code` as uid 65534: it reads `json.load(sys.stdin)` and prints one JSON document."""
    argv = [_interpreter(), "-I", "-c", _PRELUDE.format(paths=site.getsitepackages()) + code]
    done = _as_nobody(argv, stdin=json.dumps(payload), timeout_s=timeout_s)
    if done.returncode < 0:
        # killed by a signal: grpc's epoll poller in the attacker's own process can abort ("Check failed:
        # next_worker->state == KICKED") when many channels close at once; that says nothing about the agent, so
        # the attack is run once more, whole
        done = _as_nobody(argv, stdin=json.dumps(payload), timeout_s=timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"the unprivileged attacker crashed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
