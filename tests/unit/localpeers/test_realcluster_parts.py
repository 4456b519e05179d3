"""The real cluster's pure parts: the iptables restore input, the state comparison, the image archive, and the
configuration that keeps traffic on the machine (localpeers/hoststate.py, nodeimages.py, nodeconfig.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from localpeers import hoststate, nodeconfig
from localpeers.nodeimages import oci_archive
from localpeers.oci_image import read_oci_layout

SAVED = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n"


def test_restore_input_keeps_the_saved_tables_and_empties_the_new_ones() -> None:
    text = hoststate.iptables_restore_input(SAVED, {"filter", "nat"})
    assert "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]" in text
    assert "-A INPUT -i lo -j ACCEPT\nCOMMIT\n" in text
    nat = text[text.index("*nat") :]
    chains = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
    assert nat == "*nat\n" + "".join(f":{chain} ACCEPT [0:0]\n" for chain in chains) + "COMMIT\n"


def test_restore_input_is_empty_when_there_were_and_are_no_tables() -> None:
    assert hoststate.iptables_restore_input("\n", set()) == ""


def test_differences_name_each_changed_setting() -> None:
    before = hoststate.MachineState(sysctls={"vm/overcommit_memory": "0"}, links=["eth0", "lo"], paths={"/x": False})
    after = hoststate.MachineState(
        sysctls={"vm/overcommit_memory": "1"}, links=["eth0", "lo", "etbr0"], paths={"/x": True}
    )
    assert hoststate.differences(before, after) == [
        "sysctl vm/overcommit_memory: '0' -> '1'",
        "links: new etbr0",
        "path /x: existed False -> True",
    ]
    assert hoststate.differences(before, before) == []


def test_a_state_survives_its_file(tmp_path: Path) -> None:
    state = hoststate.MachineState(sysctls={"kernel/panic": "1"}, iptables={"iptables": SAVED}, cgroups=["cpu/a"])
    state.save(tmp_path / "state.json")
    assert hoststate.MachineState.load(tmp_path / "state.json") == state


def test_the_node_image_archive_is_an_oci_layout_named_for_containerd(tmp_path: Path) -> None:
    files = {"bin/tool": (b"#!", 0o755)}
    archive = oci_archive("edgetrust.local/x:1", files, {"bin/sh": "tool"}, ["/bin/tool"], tmp_path / "x.oci.tar")
    layout = tmp_path / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "edgetrust.local/x:1"
    digest, config = read_oci_layout(layout)
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())
    layer = manifest["layers"][0]["digest"].removeprefix("sha256:")
    with tarfile.open(layout / "blobs" / "sha256" / layer) as members:
        assert sorted(members.getnames()) == ["bin", "bin/sh", "bin/tool"]
        assert members.getmember("bin/sh").linkname == "tool"
    again = oci_archive("edgetrust.local/x:1", files, {"bin/sh": "tool"}, ["/bin/tool"], tmp_path / "y.oci.tar")
    assert again.read_bytes() == archive.read_bytes()  # same inputs, same bytes (and digest)


def test_pods_get_no_default_route_and_no_masquerade(tmp_path: Path) -> None:
    bridge = json.loads(nodeconfig.cni_conflist(tmp_path))["plugins"][0]
    assert bridge["isDefaultGateway"] is False
    assert bridge["ipMasq"] is False
    assert {route["dst"] for route in bridge["ipam"]["routes"]} == {nodeconfig.SERVICE_CIDR, f"{nodeconfig.NODE_IP}/32"}


def test_kube_proxy_changes_no_sysctl(tmp_path: Path) -> None:
    config = json.loads(nodeconfig.kube_proxy_config(tmp_path / "k", healthz_port=1, metrics_port=2))
    assert config["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }
    assert config["iptables"]["localhostNodePorts"] is False  # else it sets route_localnet
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
