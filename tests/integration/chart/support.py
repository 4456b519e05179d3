"""What the chart tests share: the pinned helm, the user's own inputs (a fresh publisher key and a policy bundle
signed with it, as charts/edgetrust/README.md makes them), and the README's `sh` blocks, run as written."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.chartrelease import HELM_HOME, helm
from localpeers.peers import peer
from localpeers.webhook import LOOPBACK_SITE

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "edgetrust"
README = CHART / "README.md"
NAMESPACE = "edgetrust-system"
__all__ = ["HELM_HOME", "helm"]  # the one helm of localpeers.chartrelease, for the chart tests


@dataclass(frozen=True)
class UserInputs:
    """A user's publisher key (public half) and a bundle signed with it, base64 as `base64` writes it (wrapped)."""

    public_key: Path
    bundle: bytes
    bundle_b64: Path

    def set_files(self) -> list[str]:
        """The flags the README gives every install: the bundle, and the key for the webhook and the syncer."""
        return [
            "--set-file",
            f"webhook.policyBundleBase64={self.bundle_b64}",
            "--set-file",
            f"webhook.bundleKeys.ci-1={self.public_key}",
            "--set-file",
            f"syncer.verificationKeys.ci-1={self.public_key}",
        ]


def make_user_inputs(work: Path, group: str = "stores") -> UserInputs:
    work.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    public = work / "ci-1.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    files = sign_files(
        build_files(
            read_repository(REPO / "policies", parameters=LOOPBACK_SITE), counter=1, commit="chart", group=group
        ),
        SigningKey("ci-1", key),
    )
    bundle = pack(files)
    text = base64.b64encode(bundle).decode()
    wrapped = work / "bundle.b64"
    wrapped.write_text("\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n")
    return UserInputs(public, bundle, wrapped)


def readme_blocks() -> list[str]:
    """The README's ```sh blocks, in order (```text blocks need a cluster and a hub: they are not run here)."""
    return re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.S | re.M)


def run_readme_block(block: str, cwd: Path, *, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One block in bash, as a user runs it in their working directory: helm is the pinned one, trustctl this
    checkout's, and EDGETRUST the checkout (nothing in the text is substituted)."""
    env = {**os.environ, **HELM_HOME, "EDGETRUST": str(REPO)}
    env["PATH"] = os.pathsep.join([str(peer("helm").parent), str(Path(sys.executable).parent), env.get("PATH", "")])
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"README block failed ({done.returncode}):\n{block}\n{done.stdout}\n{done.stderr}")
    return done
