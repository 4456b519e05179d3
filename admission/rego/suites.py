"""`trustctl policy test`: Gatekeeper test suites (`kind: Suite`), run with `gator verify`'s semantics on the
same decision path as the webhook (templates loaded into a real OPA, constraints matched as in admission).

Per test: one template and one constraint. Per case: an object (or an AdmissionReview), optional inventory
objects, and assertions: `violations` (yes, no or a count; yes when absent) over the violations whose message
matches the optional `message` regex. An object the constraint does not match has no violations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from admission.errors import AdmissionError, ConfigError
from admission.rego.gatekeeper import GatekeeperSet, build_set, load_documents
from admission.rego.inventory import Inventory
from admission.rego.opa import OpaDecider, OpaSettings

SUITE_API = "test.gatekeeper.sh/v1alpha1"


@dataclass(frozen=True, slots=True)
class CaseResult:
    suite: str
    test: str
    case: str
    ok: bool
    detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.test}/{self.case}"


def find_suites(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("suite.yaml") if p.is_file()))
        else:
            raise ConfigError(f"{path} does not exist")
    return found


def review_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the API server would send for creating `obj` (or the request of an AdmissionReview object)."""
    if obj.get("kind") == "AdmissionReview" and isinstance(obj.get("request"), dict):
        return dict(obj["request"])
    api_version = str(obj.get("apiVersion", "v1"))
    group, _, version = api_version.rpartition("/")
    metadata = obj.get("metadata") or {}
    return {
        "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
        "name": metadata.get("name", ""),
        "namespace": metadata.get("namespace", ""),
        "operation": "CREATE",
        "object": dict(obj),
        "userInfo": {"username": "gator"},
    }


def _one_object(path: Path) -> Mapping[str, Any]:
    documents = [d for d, _ in load_documents([path])]
    if len(documents) != 1:
        raise ConfigError(f"{path}: a case object file must hold exactly one object, found {len(documents)}")
    return documents[0]


def check_assertions(messages: Sequence[str], assertions: Sequence[Mapping[str, Any]]) -> str | None:
    """None when every assertion holds, else what did not."""
    for assertion in assertions or [{"violations": "yes"}]:
        pattern = assertion.get("message")
        matching = [m for m in messages if pattern is None or re.search(str(pattern), m)]
        expected = assertion.get("violations", "yes")
        where = f" matching {pattern!r}" if pattern is not None else ""
        if expected in ("yes", True):
            if not matching:
                return f"expected violations{where}, got none (all: {list(messages)})"
        elif expected in ("no", False):
            if matching:
                return f"expected no violations{where}, got {matching}"
        elif isinstance(expected, int):
            if len(matching) != expected:
                return f"expected {expected} violations{where}, got {len(matching)}: {matching}"
        else:
            return f"assertion violations: {expected!r} is not yes, no or a count"
    return None


async def run_suite(path: Path, opa: OpaDecider) -> list[CaseResult]:
    base = path.parent
    try:
        suite = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [CaseResult(str(path), "-", "-", False, f"cannot read suite: {exc}")]
    if not isinstance(suite, dict) or suite.get("kind") != "Suite":
        return [CaseResult(str(path), "-", "-", False, "not a kind: Suite document")]
    name = str((suite.get("metadata") or {}).get("name") or base.name)
    results: list[CaseResult] = []
    for test in suite.get("tests") or []:
        test_name = str(test.get("name", "?"))
        try:
            files = [base / str(test["template"]), base / str(test["constraint"])]
            gatekeeper = build_set(load_documents(files))
            if len(gatekeeper.constraints) != 1:
                raise ConfigError(f"{files[1]}: expected one constraint, found {len(gatekeeper.constraints)}")
            await opa.load([], [], gatekeeper)
        except (AdmissionError, KeyError, OSError) as exc:
            results.append(CaseResult(name, test_name, "*", False, f"cannot load: {exc}"))
            continue
        for case in test.get("cases") or []:
            results.append(await _run_case(name, test_name, case, base, gatekeeper, opa))
    return results


async def _run_case(
    suite: str, test: str, case: Mapping[str, Any], base: Path, gatekeeper: GatekeeperSet, opa: OpaDecider
) -> CaseResult:
    case_name = str(case.get("name", "?"))
    constraint = gatekeeper.constraints[0]
    try:
        review = review_of(_one_object(base / str(case["object"])))
        inventory = Inventory()
        inventory.replace(d for f in case.get("inventory") or [] for d, _ in load_documents([base / str(f)]))
        await opa.set_inventory(inventory.tree)
        messages: list[str] = []
        if constraint.match.matches(review, inventory.namespace_labels):
            decision = await opa.decide(review, [], [constraint])
            if constraint.id not in decision.constraints:
                raise ConfigError("OPA has no decision for the constraint")
            messages = decision.constraints[constraint.id]
    except (AdmissionError, KeyError, OSError) as exc:
        return CaseResult(suite, test, case_name, False, f"cannot run: {exc}")
    failure = check_assertions(messages, case.get("assertions") or [])
    return CaseResult(suite, test, case_name, failure is None, failure or "")


def opa_binary() -> str:
    cache = Path.home() / ".cache" / "edgetrust" / "peers" / "bin" / "opa"
    found = shutil.which("opa") or (str(cache) if cache.exists() else None)
    if found is None:
        raise ConfigError("no opa binary: put one on PATH, pass --opa, or run hack/install-peers opa")
    return found


@contextmanager
def local_opa(binary: str, port: int) -> Iterator[OpaSettings]:
    """A private OPA on loopback for the length of a test run (Rego v0 allowed, as Gatekeeper templates need)."""
    argv = [binary, "run", "--server", "--v0-compatible", "--addr", f"127.0.0.1:{port}", "--log-level", "error"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise ConfigError(f"opa did not start: {error[-500:]}")
            time.sleep(0.05)
        yield OpaSettings(port=port, timeout_s=10.0)
    finally:
        process.terminate()
        process.wait(timeout=10)
