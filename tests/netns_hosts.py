"""Several "hosts" on one machine: Linux network namespaces joined by a bridge, for tests/test_hosts.py.

`Network` makes one namespace per host plus a switch namespace holding a bridge;
each host has a veth whose other end is a port of that bridge, and an address
10.a.b.<n>/24 of a /24 chosen so it is not on this machine yet. The test process
itself (the root namespace) gets one more port, .254, only to watch Redis. Pulling
a host's cable is `ip link set <its switch port> down`. `close` kills every
process started in a host, deletes the root end of the watch link and every
namespace (with them their veths and the bridge); it runs even when a test fails.

Imported inside test workers too (`--include netns_hosts`), where HOSTS_TEST_EVENTS
switches on hooks: each batch taken, held and finished is appended, with its
time, to a file (the file system is shared by all namespaces, so a host cut off
from Redis still reports), and HOSTS_TEST_HOLD_NTH=n holds the n-th batch a
worker scores, after its delivery is counted and before its write-back, until
the file HOSTS_TEST_RELEASE exists (at most HOLD_LIMIT seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLD_LIMIT = 90.0  # s a held batch waits for its release file at most


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def why_no_namespaces() -> str | None:
    """None when this process can make network namespaces and veths, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces with"
    if shutil.which("redis-server") is None:
        return "no redis-server on PATH"
    if os.geteuid() != 0:
        return f"making network namespaces needs root (this test runs as uid {os.geteuid()})"
    probe = f"agile-probe-{uuid.uuid4().hex[:6]}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        veth = ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            return f"`ip link add ... type veth` failed: {veth.stderr.strip()}"
        bridge = ip("-n", probe, "link", "add", "b0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"`ip link add ... type bridge` failed: {bridge.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def free_subnet() -> str:
    """'10.a.b' of a /24 no address or route of this machine touches."""
    taken = ip("-4", "addr").stdout + ip("-4", "route").stdout
    for _ in range(100):
        prefix = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
        if f"{prefix}." not in taken:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 found in 100 tries")


class HostProcess:
    """A process started inside a host's namespace (`ip netns exec` execs it: same pid)."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc = proc
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_text(self, needle: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{what} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Network:
    """Hosts (one network namespace each) on one bridge, in a switch namespace of their own."""

    def __init__(self, hosts: list[str], logdir: Path):
        self.tag = uuid.uuid4().hex[:5]  # unique names, so runs side by side never meet
        self.logdir = logdir
        self.subnet = free_subnet()
        self.switch = f"agile-{self.tag}-switch"
        self.namespaces: list[str] = []
        self.hosts = {name: f"agile-{self.tag}-{name}" for name in hosts}
        self.address = {name: f"{self.subnet}.{i + 1}" for i, name in enumerate(hosts)}
        self.port = {name: f"s{self.tag}{i}" for i, name in enumerate(hosts)}  # its end on the bridge
        self.watcher = f"{self.subnet}.254"  # the test process's own address on the bridge
        self.watch_link = f"w{self.tag}r"
        self.processes: list[HostProcess] = []

    def create(self) -> Network:
        self._namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for name, ns in self.hosts.items():
            self._namespace(ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", self.port[name],
               "netns", self.switch)
            ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            self._plug(self.port[name])
        ip("link", "add", self.watch_link, "type", "veth", "peer", "name", f"w{self.tag}s", "netns", self.switch)
        ip("addr", "add", f"{self.watcher}/24", "dev", self.watch_link)
        ip("link", "set", self.watch_link, "up")
        self._plug(f"w{self.tag}s")
        return self

    def _namespace(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _plug(self, port: str) -> None:
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")

    def cut(self, host: str) -> None:
        """Pull the host's cable at the switch: its packets go nowhere, its sockets stay open."""
        ip("-n", self.switch, "link", "set", self.port[host], "down")

    def mend(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.port[host], "up")

    def start(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> HostProcess:
        log = self.logdir / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[host], *argv], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        started = HostProcess(proc, log)
        self.processes.append(started)
        return started

    def run(self, host: str, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """Run a command in a host to its end (bounded by `timeout`)."""
        return subprocess.run(["ip", "netns", "exec", self.hosts[host], *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop()
        for ns in self.namespaces:  # anything still in our namespaces was started by this network
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        ip("link", "del", self.watch_link, check=False)  # its peer on the bridge goes with it
        for ns in reversed(self.namespaces):  # their veths and the bridge go with them
            ip("netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        """Namespaces or links of this network still on the machine (none after `close`)."""
        names = ip("netns", "list").stdout + ip("link").stdout
        return [n for n in (*self.namespaces, self.watch_link) if n in names]


# ---------------------------------------------------------------- hooks inside test workers


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def install_hooks() -> None:
    from celery.signals import task_postrun, task_prerun

    from agile.worker.runtime import Runtime

    log = Path(os.environ["HOSTS_TEST_EVENTS"])
    nth = int(os.environ.get("HOSTS_TEST_HOLD_NTH", "0"))
    release = Path(os.environ.get("HOSTS_TEST_RELEASE", "/nonexistent"))
    state = {"batch": None, "scored": 0}

    def note(event: str, **more) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"event": event, "batch": state["batch"], "pid": os.getpid(), "t": time.time(),
                                **more}) + "\n")

    @task_prerun.connect(weak=False)
    def taken(kwargs=None, **_):
        state["batch"] = (kwargs or {}).get("batch_id")
        note("taken")

    @task_postrun.connect(weak=False)
    def finished(retval=None, **_):
        note("finished", retval=retval if isinstance(retval, dict) else repr(retval))

    score = Runtime.score

    def held_score(self, policy, texts):
        state["scored"] += 1
        if state["scored"] == nth:
            note("held")
            deadline = time.monotonic() + HOLD_LIMIT
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            note("released")
        return score(self, policy, texts)

    Runtime.score = held_score


if os.environ.get("HOSTS_TEST_EVENTS"):
    install_hooks()
