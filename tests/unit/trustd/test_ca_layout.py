"""The CA's three parts import one way only (keystore <- authority <- rotation), and every KeyUsage is spelled
with named arguments: nine positional booleans in a row is how a CA ends up with key_cert_sign on a leaf."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CA = ROOT / "trustd" / "server" / "ca"
PARTS = ("keystore", "authority", "rotation")
#: what each part may import of the others; anything else would let them circle again
ALLOWED = {"keystore": set(), "authority": {"keystore"}, "rotation": {"keystore", "authority"}}


def _ca_imports(path: Path) -> set[str]:
    """The trustd.server.ca modules a file imports, anywhere in it (module level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "trustd.server.ca" or name.startswith("trustd.server.ca."):
                found.add(name.removeprefix("trustd.server.ca").lstrip(".").split(".")[0] or "__init__")
    return found


def test_the_ca_parts_do_not_import_in_a_circle() -> None:
    graph = {part: _ca_imports(CA / f"{part}.py") & set(PARTS) for part in PARTS}
    for part, imports in graph.items():
        assert imports <= ALLOWED[part], f"trustd.server.ca.{part} imports {sorted(imports - ALLOWED[part])}"
    assert not (ROOT / "trustd" / "server" / "ca_rotation.py").exists()
    assert not (ROOT / "trustd" / "server" / "ca.py").exists()


def test_no_ca_part_takes_names_from_the_package() -> None:
    """`from trustd.server.ca import SpiffeCA` inside a part would run __init__, which imports the parts: a circle."""
    for part in PARTS:
        tree = ast.parse((CA / f"{part}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "trustd.server.ca":
                assert {alias.name for alias in node.names} <= set(PARTS), f"{part}: from trustd.server.ca import ..."


@pytest.mark.parametrize(
    "module",
    [
        "trustd.server.ca.keystore",
        "trustd.server.ca.authority",
        "trustd.server.ca.rotation",
        "trustd.server.ca",
        "edgetrust.spiffe.bundle",
    ],
)
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_key_usage_names_its_arguments() -> None:
    positional = []
    for path in sorted(ROOT.rglob("*.py")):
        if {".venv", ".git", "node_modules"} & set(path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and node.args:
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name == "KeyUsage":
                    positional.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not positional, f"x509.KeyUsage with positional arguments: {positional}"
