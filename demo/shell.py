"""How the demo shows what it does: every command it runs is printed first as a copyable shell line
(`$ trustctl enroll --hub https://127.0.0.1:8443 --ca-bundle .demo/hub-roots.pem ...`), with our commands by
their name (as installed), paths relative to the repository, quoted by shlex. A step done in Python that a
person would do otherwise is said in one `#` line. Nothing secret is printed: commands name key and token
files, never their contents.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: the repository (`make demo` runs from its root): paths under it are shown relative to it
REPO = Path.cwd().resolve()
BIN = Path(sys.executable).parent


def say(text: str = "") -> None:
    print(text, flush=True)


def _word(word: str) -> str:
    if word.startswith(f"{BIN}/"):
        return word[len(str(BIN)) + 1 :]
    return word.replace(f"{REPO}/", "")


def shown(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, suffix: str = "") -> str:
    """`argv` as one shell line (with `env` assignments before it, and e.g. ` &` or ` > FILE` after)."""
    words = [f"{key}={_word(value)}" for key, value in (env or {}).items()]
    return shlex.join([*words, *(_word(str(arg)) for arg in argv)]) + suffix


def command(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, suffix: str = "") -> None:
    say(f"   $ {shown(argv, env=env, suffix=suffix)}")


def note(text: str) -> None:
    """A step the demo does in Python, in one line (what it does, and the command when there is one)."""
    say(f"   # {_word(text)}")


def run(
    argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    """Show the command, run it, show what it printed (indented), return it."""
    command(argv, env=env)
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if not quiet:
        for line in (done.stdout + done.stderr).strip().splitlines():
            say(f"     {line}")
    if done.returncode != 0:
        say(f"     (exit code {done.returncode})")
    return done


def start(argv: Sequence[str | Path], *, log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Show the command (in the background, its output in `log`) and start it."""
    command(argv, env=env, suffix=f" > {shlex.quote(_word(str(log)))} 2>&1 &")
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def curl(method: str, url: str, *, ca_file: Path, body: Path | None = None, token: bool = False) -> None:
    """The curl line for a call the demo makes with its HTTP client (the API server: `kubectl` is not installed
    here); the API server's token is `$TOKEN`, never printed."""
    argv: list[str | Path] = ["curl", "-sS", "--cacert", ca_file, "-X", method]
    if token:
        argv += ["-H", "Authorization: Bearer $TOKEN"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", f"@{_word(str(body))}"]
    line = shown([*argv, url])
    if token:  # in double quotes, so that the shell expands $TOKEN
        line = line.replace(shlex.quote("Authorization: Bearer $TOKEN"), '"Authorization: Bearer $TOKEN"')
    say(f"   $ {line}")
