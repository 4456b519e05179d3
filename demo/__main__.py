"""Run the demos of each plane in order; the exit code says whether each showed what it should."""

from __future__ import annotations

import sys
from pathlib import Path

from demo import admission_demo, distribution_demo, identity_demo
from demo.node import real_node


def main() -> int:
    print("######## Plane 1: attestation -> identity ########", flush=True)
    identity = identity_demo.main()
    with real_node(Path(".demo/node")) as node:  # one real node for the planes that need one
        print("\n######## Plane 2: admission ########", flush=True)
        admission = admission_demo.main(node)
        print("\n######## Plane 3: policy distribution, and the three planes as one ########", flush=True)
        distribution = distribution_demo.main(node.cluster, node.images)
    print("\n######## Done ########")
    for plane, code in (("identity", identity), ("admission", admission), ("distribution", distribution)):
        print(f"   {plane} plane: {'ok' if code == 0 else 'FAILED'}")
    return 0 if identity == admission == distribution == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
