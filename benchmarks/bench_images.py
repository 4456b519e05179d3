"""The images `make images` builds: their sizes, a warm build's time, and whether two builds of one commit agree.

Sizes come from images.json of this checkout's commit (built first if missing): unpacked = the layer tars'
bytes (what a node's disk holds, the issue's goal: edgetrust <= 200 MB), compressed = config and gzip layers
(what a pull transfers). Then the same commit is built again with `--rebuild` into a second output folder: its
time is a warm build (the Debian root and the dependency wheels come from the cache, everything of the commit is
made again: its wheel, pip in the chroot, the trimming, compileall, the layers), and `reproducible` is 1 when
all three manifest digests are the same as the first build's, else 0 (the differing images are printed).
Needs root (as make images). Run it alone: it takes the build folder's lock, and 2 cores are shared.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localpeers.images import BuildError, build, build_root

MIB = 2**20


FIGURES: list[tuple[str, float, str]] = []


def result(metric: str, value: float, unit: str) -> None:
    FIGURES.append((metric, value, unit))


def report() -> None:
    """The table for people, then one RESULT line per figure, last."""
    print(f"{'metric':<26} {'value':>9} unit")
    for metric, value, unit in FIGURES:
        print(f"{metric:<26} {value:>9g} {unit}")
    for metric, value, unit in FIGURES:
        print("RESULT " + json.dumps({"bench": "images", "metric": metric, "value": value, "unit": unit}))


def main() -> int:
    try:
        first: dict[str, Any] = json.loads(build().read_text())
    except BuildError as error:
        print(f"bench_images: {error}", file=sys.stderr)
        return 1
    images = first["images"]
    edgetrust = images["edgetrust"]
    result("edgetrust_mib", round(edgetrust["unpacked_bytes"] / MIB, 1), "MiB")
    result("edgetrust_mb", round(edgetrust["unpacked_bytes"] / 10**6, 1), "MB")
    result("edgetrust_compressed_mib", round(edgetrust["compressed_bytes"] / MIB, 1), "MiB")
    result("opa_mib", round(images["opa"]["unpacked_bytes"] / MIB, 1), "MiB")
    result("pause_mib", round(images["pause"]["unpacked_bytes"] / MIB, 2), "MiB")

    again_dir = build_root() / "out" / f"{first['commit']}-bench-rebuild"
    try:
        started = time.monotonic()
        again: dict[str, Any] = json.loads(build(rebuild=True, out=again_dir).read_text())
        elapsed = time.monotonic() - started
    except BuildError as error:
        print(f"bench_images: the rebuild failed: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(again_dir, ignore_errors=True)
    result("build_warm_s", round(elapsed, 1), "s")
    differing = sorted(short for short in images if images[short]["digest"] != again["images"][short]["digest"])
    for short in differing:
        print(f"bench_images: {short}: {images[short]['digest']} then {again['images'][short]['digest']}")
    result("reproducible", 0 if differing else 1, "bool")
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
