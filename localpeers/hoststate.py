"""What the real cluster changes on the machine, recorded before it starts and put back after it stops.

A kubelet node is not a tenant of a folder: kubelet writes sysctls (vm.overcommit_memory, kernel.panic, ...),
kubelet, kube-proxy and kube-router add iptables chains and ipsets, the CNI plugin makes a bridge, veths, network
namespaces and bind mounts, kubelet makes `kubepods` cgroups, and several programs leave files in /run and
/var/lib. `snapshot()` records all of it as plain data (saved as JSON in the cluster's folder, so that `down`
can still restore after the supervising process was killed); `restore()` undoes every difference it owns and
returns the ones it could not, and `differences()` is what the teardown test asserts empty.

Only what the cluster made is removed: this machine is shared (the lead's tests make network namespaces, veths
and mounts; other helpers run their own containerd), so new mounts, netns, links, cgroups and files are touched
only under the paths and names listed here, and anything else new is left alone. iptables, nft tables, ipsets
and sysctls are restored whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: files and folders the node's programs create outside the cluster folder when they do not exist yet
WATCHED_PATHS = (
    "/run/edgetrust-node",
    "/run/containerd",
    "/run/netns",
    "/run/runc",
    "/run/kubernetes",
    "/var/run/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/kube-router",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni",
    "/etc/kubernetes",
    "/opt/cni",
    "/opt/containerd",
)
#: new mounts under these are the cluster's (netns bind mounts, kubelet's pod volumes, overlay rootfs)
_OWNED_MOUNT_PREFIXES = (
    "/run/edgetrust-node",
    "/run/netns/cni-",  # containerd's CRI names its pod namespaces cni-<uuid>; other tests here make their own
    "/var/run/netns/cni-",
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/lib/containerd",
)
#: per-interface sysctls come and go with the interfaces; counters and one-shot triggers are not settings
_SYSCTL_SKIP = re.compile(
    r"^(net/ipv[46]/(conf|neigh)/(?!all/|default/)|kernel/random/|kernel/ns_last_pid|fs/binfmt_misc/"
    r"|vm/drop_caches|kernel/usermodehelper/|fs/protected_)"
)
_TABLE_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
_CGROUP_ROOT = Path("/sys/fs/cgroup")
#: the cgroups kubelet makes with the cgroupfs driver (QoS classes and pods below); another session's new
#: cgroups (its own containerd's) are never killed or removed
_OWNED_CGROUPS = ("kubepods",)


@dataclass
class MachineState:
    """The machine settings the cluster may change, as JSON-able data."""

    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)  # "iptables"/"ip6tables" -> rules (counters dropped)
    nft_tables: list[str] = field(default_factory=list)
    ipsets: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)  # `ip rule` (policy routing)
    netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # "<controller>/<top folder>"
    paths: dict[str, bool] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> MachineState:
        return cls(**json.loads(path.read_text()))


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def _sysctls() -> dict[str, str]:
    values: dict[str, str] = {}
    for folder, _dirs, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(folder, name)
            key = path.removeprefix("/proc/sys/")
            if _SYSCTL_SKIP.match(key) or not os.stat(path).st_mode & 0o200:
                continue
            try:
                with open(path) as handle:
                    values[key] = handle.read().strip()
            except OSError:
                continue  # write-only triggers (route/flush, compact_memory) and unreadable ones
    return values


def _iptables(tool: str) -> str:
    """The rules without counters and comments, so that two saves of the same rules compare equal."""
    lines = _run(f"{tool}-save").splitlines()
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in lines if not line.startswith("#")) + "\n"


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def _rules() -> list[str]:
    return sorted(line.replace(" [detached]", "") for line in _run("ip", "-4", "rule", "show").splitlines())


def _cgroups() -> list[str]:
    found = []
    for controller in sorted(os.listdir(_CGROUP_ROOT)):
        base = _CGROUP_ROOT / controller
        if base.is_dir():
            found += [f"{controller}/{entry.name}" for entry in base.iterdir() if entry.is_dir()]
    return sorted(found)


def snapshot() -> MachineState:
    netns = Path("/run/netns")
    return MachineState(
        sysctls=_sysctls(),
        iptables={tool: _iptables(tool) for tool in ("iptables", "ip6tables")},
        nft_tables=sorted(_run("nft", "list", "tables").splitlines()),
        ipsets=sorted(_run("ipset", "list", "-n").split()),
        mounts=_mounts(),
        links=sorted(line.split(":")[1].strip().split("@")[0] for line in _run("ip", "-o", "link").splitlines()),
        routes=sorted(_run("ip", "route", "show", "table", "all").splitlines()),
        rules=_rules(),
        netns=sorted(os.listdir(netns)) if netns.is_dir() else [],
        cgroups=_cgroups(),
        paths={path: os.path.lexists(path) for path in WATCHED_PATHS},
    )


def differences(before: MachineState, after: MachineState) -> list[str]:
    """Every setting that differs, one line each (empty: the machine is as it was)."""
    found = [
        f"sysctl {key}: {before.sysctls.get(key)!r} -> {after.sysctls.get(key)!r}"
        for key in sorted(set(before.sysctls) | set(after.sysctls))
        if before.sysctls.get(key) != after.sysctls.get(key)
    ]
    for tool in before.iptables:
        if before.iptables[tool] != after.iptables.get(tool):
            found.append(f"{tool}-save differs:\n{after.iptables.get(tool)}")
    for name in ("nft_tables", "ipsets", "mounts", "links", "routes", "rules", "netns", "cgroups"):
        old, new = set(getattr(before, name)), set(getattr(after, name))
        found += [f"{name}: new {item}" for item in sorted(new - old)]
        found += [f"{name}: gone {item}" for item in sorted(old - new)]
    found += [
        f"path {path}: existed {existed} -> {after.paths.get(path)}"
        for path, existed in before.paths.items()
        if after.paths.get(path) != existed
    ]
    return found


def iptables_restore_input(saved: str, present: set[str]) -> str:
    """The iptables-restore input that puts `saved` back: every table in it as saved, and every table present
    now but absent then emptied (iptables-restore deletes the user chains of each table it is given)."""
    blocks = dict(re.findall(r"^\*(\w+)\n(.*?^COMMIT)$", saved, re.M | re.S))
    text = ""
    for table in sorted(present | set(blocks)):
        if table in blocks:
            text += f"*{table}\n{blocks[table]}\n"
        elif table in _TABLE_CHAINS:
            text += f"*{table}\n" + "".join(f":{chain} ACCEPT [0:0]\n" for chain in _TABLE_CHAINS[table]) + "COMMIT\n"
    return text


def _restore_iptables(tool: str, saved: str) -> list[str]:
    text = iptables_restore_input(saved, set(re.findall(r"^\*(\w+)$", _run(f"{tool}-save"), re.M)))
    if not text:
        return []
    done = subprocess.run([f"{tool}-restore"], input=text, capture_output=True, text=True, check=False)
    return [] if done.returncode == 0 else [f"{tool}-restore failed: {done.stderr.strip()}"]


def _kill_cgroup_tasks(folder: Path) -> None:
    """SIGKILL what still runs in a cgroup the cluster made (containers kubelet did not stop)."""
    for procs in folder.rglob("cgroup.procs"):
        try:
            pids = [int(pid) for pid in procs.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _remove_cgroup(folder: Path) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        problems = []
        for sub, _dirs, _files in sorted(os.walk(folder, topdown=False), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
            except OSError as error:
                problems.append(f"cgroup {sub}: {error}")
        if not problems or time.monotonic() > deadline:
            return problems
        _kill_cgroup_tasks(folder)
        time.sleep(0.2)


def _user_of(path: str) -> int | None:
    """A process that has a file or a bound unix socket under `path` open (another session's containerd may
    have made /run/containerd meanwhile: removing it would break that session), or None."""
    prefix = path.rstrip("/") + "/"
    sockets = {
        line.split()[6]
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]
        if len(line.split()) > 7 and line.split()[7].startswith(prefix)
    }
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if target.startswith(prefix) or (target.startswith("socket:[") and target[8:-1] in sockets):
                    return int(entry)
        except OSError:
            continue
    return None


def restore(before: MachineState, *, owned_links: tuple[str, ...], owned_folder: Path) -> list[str]:
    """Undo what the cluster changed; return what could not be undone (empty: all of it was)."""
    problems: list[str] = []
    now = snapshot()
    new_cgroups = [c for c in sorted(set(now.cgroups) - set(before.cgroups)) if c.split("/")[1] in _OWNED_CGROUPS]
    for cgroup in new_cgroups:
        _kill_cgroup_tasks(_CGROUP_ROOT / cgroup)
    for name in sorted(n for n in set(now.netns) - set(before.netns) if n.startswith("cni-")):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    owned = (*_OWNED_MOUNT_PREFIXES, str(owned_folder))
    for point in sorted(set(_mounts()) - set(before.mounts), key=len, reverse=True):
        if not point.startswith(owned):
            continue  # another session's (this machine is shared): not ours to undo, and not our failure
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for link in sorted(set(now.links) - set(before.links)):
        # a pod's host-side veth goes with its network namespace; any other new link is another session's
        if link in owned_links:
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
    for rule in sorted(set(_rules()) - set(before.rules)):
        pref, spec = rule.split(":", 1)
        subprocess.run(["ip", "-4", "rule", "del", "pref", pref, *spec.split()], capture_output=True, check=False)
    for tool, saved in before.iptables.items():
        problems += _restore_iptables(tool, saved)
    for table in sorted(set(_run("nft", "list", "tables").splitlines()) - set(before.nft_tables)):
        subprocess.run(["nft", "delete", *table.split()], capture_output=True, check=False)
    for ipset in sorted(set(_run("ipset", "list", "-n").split()) - set(before.ipsets)):
        subprocess.run(["ipset", "destroy", ipset], capture_output=True, check=False)
    for flow in ("-s", "-d"):
        subprocess.run(["conntrack", "-D", flow, "198.18.0.0/15"], capture_output=True, check=False)
    for cgroup in new_cgroups:
        problems += _remove_cgroup(_CGROUP_ROOT / cgroup)
    for key, value in before.sysctls.items():
        setting = Path("/proc/sys") / key
        try:
            if setting.read_text().strip() != value:
                setting.write_text(value)
        except OSError as error:
            problems.append(f"sysctl {key}: could not write back {value!r}: {error}")
    for path, existed in before.paths.items():
        if not existed and os.path.lexists(path) and _user_of(path) is not None:
            continue  # in use by a program that is not the cluster's (ours are all stopped): another session's
        if not existed and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            if os.path.lexists(path):
                problems.append(f"could not remove {path}")
    return problems
