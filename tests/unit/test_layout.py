"""The layout's rules, checked on the tree (issue 13).

- A deployable (the hub trustd.server, the node agent trustd.agent, the webhook admission, the syncer) imports
  libraries only (attestation, edgetrust, and trustd's own errors), never another deployable; libraries import
  no deployable; only trustd.cli wires packages together (and demo, localpeers, tests, benchmarks, which are not
  shipped). Shipped code never imports localpeers, demo or tests.
- `trustctl enroll --help` and `trustctl agent run --help` load none of the server's or the webhook's
  dependencies: a device installs `edgetrust[device]` only.
- Unit tests import without tpm2-pytss: a test that needs a TPM is an integration test.
- Each deployable's extra (pyproject.toml) holds what its code imports: the base dependencies plus its extra
  install everything the deployable imports, at any depth.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("attestation", "edgetrust", "trustd", "admission", "syncer")
DEPLOYABLES = ("trustd.server", "trustd.agent", "admission", "syncer")
LIBRARIES = ("attestation", "edgetrust", "trustd.errors")
DEV_ONLY = ("localpeers", "demo", "tests", "benchmarks")
#: imports that break the rule today, each with the reason and the work that removes it; a pair not listed fails
KNOWN: dict[tuple[str, str], str] = {}
SERVER_DEPENDENCIES = ("fastapi", "psycopg", "sigstore", "opa_client", "kubernetes", "kubernetes_asyncio")


def _component(module: str) -> str:
    for prefix in (*DEPLOYABLES, "trustd.cli", *LIBRARIES, *DEV_ONLY):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for package in SHIPPED:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            source = _component(module)
            if source == "trustd.cli":
                continue
            for imported in _imports(path):
                target = _component(imported)
                if target.split(".")[0] not in (*SHIPPED, *DEV_ONLY) or target == source:
                    continue
                crosses = target in DEV_ONLY or target in DEPLOYABLES or target == "trustd.cli"
                if crosses or (source in LIBRARIES and target not in LIBRARIES):
                    found.add((module, imported))
    return found


def test_no_deployable_imports_another_deployable() -> None:
    found = _violations()
    new = sorted(pair for pair in found if pair not in KNOWN)
    assert not new, "imports across deployables (or from a library into a deployable):\n" + "\n".join(
        f"  {a} imports {b}" for a, b in new
    )


def test_known_exceptions_are_still_needed() -> None:
    """An exception that no longer happens is removed from KNOWN, so the list shrinks and never hides one."""
    stale = sorted(pair for pair in KNOWN if pair not in _violations())
    assert not stale, f"no longer imported, remove from KNOWN: {stale}"


@pytest.mark.parametrize("argv", [["enroll", "--help"], ["agent", "run", "--help"]])
def test_trustctl_device_commands_load_no_server_dependency(argv: list[str]) -> None:
    probe = (
        "import json, sys\n"
        "from trustd.cli.trustctl import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_DEPENDENCIES!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"trustctl {' '.join(argv)} loads {loaded}"
    assert "usage: trustctl" in done.stdout


#: the modules each extra serves: the deployable's package and its command
EXTRA_ROOTS = {
    "hub": ("trustd.server", "trustd.cli.server"),
    "webhook": ("admission",),
    "syncer": ("syncer",),
    "device": ("trustd.agent", "trustd.cli.agent"),
}


def _module_path(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(path: Path) -> set[str]:
    """Every import outside `if TYPE_CHECKING:` blocks, with `from pkg import module` resolved to the module."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_path(f"{node.module}.{a.name}")}
    return found


def _modules_under(root: str) -> list[str]:
    path = _module_path(root)
    if path is None or path.name != "__init__.py":
        return [root] if path else []
    return [
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in path.parent.rglob("*.py")
    ]


def _third_party_closure(roots: tuple[str, ...]) -> set[str]:
    todo = [module for root in roots for module in _modules_under(root)]
    seen: set[str] = set()
    third: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(module)
        if path is None:
            continue
        for imported in _runtime_imports(path):
            top = imported.split(".")[0]
            if top in SHIPPED:
                parts = imported.split(".")
                todo += [".".join(parts[:cut]) for cut in range(1, len(parts) + 1)]
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with their dependencies (and the extras they ask for)."""
    out: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = _normal(requirement.name)
        if name in out:
            continue
        out.add(name)
        if name == "edgetrust":
            continue
        for text in importlib.metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            environment = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if nested.marker is None or any(nested.marker.evaluate(env) for env in environment):
                todo.append(nested)
    return out


@pytest.mark.parametrize("extra", sorted(EXTRA_ROOTS))
def test_each_extra_installs_what_its_deployable_imports(extra: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = _installed_by([*project["dependencies"], *project["optional-dependencies"][extra]])
    distributions = importlib.metadata.packages_distributions()
    missing = {
        top: distributions.get(top, [top])
        for top in _third_party_closure(EXTRA_ROOTS[extra])
        if not {_normal(d) for d in distributions.get(top, [top])} & installed
    }
    assert not missing, f"edgetrust[{extra}] does not install what its code imports: {missing}"


def test_unit_tests_import_without_tpm2_pytss() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "tests" / "unit").rglob("*.py")
        if path.name != "__init__.py"
    )
    probe = (
        "import importlib, sys\n"
        "sys.modules['tpm2_pytss'] = None  # as on a machine without the device extra\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
