"""`kdns serve --proxy userspace` end to end, as a process with no privileges at all.

The real process runs as `nobody` with every capability dropped (setpriv); where this checkout is
not readable by `nobody`, as uid 0 with an empty capability bounding set, which is just as
unprivileged for binding and networking (no CAP_NET_BIND_SERVICE, no CAP_NET_ADMIN). A client
resolves the Service name through kdns with dnspython, connects to the answered loopback VIP and
reaches an echo endpoint (threads in this process on 127.1.0.x, replying with their name);
rewriting the manifests moves new connections within a few seconds. A Service on port 80 gets
one warning line and is not relayed where net.ipv4.ip_unprivileged_port_start is above 80 (the
default, 1024), and everything else still works; where the host lets anyone bind port 80 (the
sysctl at 80 or below, e.g. 0), that Service is relayed like any other and nothing is logged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.rcode
import dns.resolver
import dns.reversename
import pytest

from kdns.proxy.loopback import allocate
from tests.conftest import need_root, need_tool
from tests.e2e.conftest import (
    LOCAL_HTTP,
    ROOT,
    START_TIMEOUT,
    ask,
    free_port,
    kdns_command,
    rdata_texts,
    wait_answering,
    write_atomically,
)
from tests.processes import stop_process

BACKENDS = ("127.1.0.11", "127.1.0.12", "127.1.0.13")
VIP_RANGE = ipaddress.IPv4Network("127.64.0.0/10")
CHANGE_TIMEOUT = 5.0  # seconds for a manifest rewrite to reach new connections
LOW_PORT = 80


class Echo(socketserver.BaseRequestHandler):
    """TCP: per line, `NAME SOURCE LINE`. UDP: per datagram, the same."""

    def handle(self) -> None:
        name = self.server.name  # type: ignore[attr-defined]
        source = self.client_address[0]
        if isinstance(self.request, tuple):
            data, sock = self.request
            sock.sendto(f"{name} {source} ".encode() + data, self.client_address)
            return
        with self.request.makefile("rb") as lines:
            for line in lines:
                self.request.sendall(f"{name} {source} ".encode() + line)


class TcpEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class UdpEcho(socketserver.ThreadingUDPServer):
    daemon_threads = True


@contextlib.contextmanager
def echo_backends(ips: tuple[str, ...]) -> Iterator[int]:
    """TCP and UDP echo servers on `ips`, one port shared by all; yields the port."""
    for _ in range(20):
        port = free_port("127.0.0.1")
        servers: list[socketserver.BaseServer] = []
        try:
            for ip in ips:
                for cls in (TcpEcho, UdpEcho):
                    server = cls((ip, port), Echo)
                    server.name = f"pod-{ip.rsplit('.', 1)[1]}"  # type: ignore[attr-defined]
                    servers.append(server)
        except OSError:
            for server in servers:
                server.server_close()
            continue
        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
        for thread in threads:
            thread.start()
        try:
            yield port
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()
        return
    pytest.fail("no port free on every backend address")


def manifests(web_port: int, low_port: int, target: int, web: tuple[str, ...]) -> str:
    def endpoints(ips: tuple[str, ...]) -> str:
        return "".join(f"- addresses: [{ip}]\n  conditions: {{ready: true}}\n" for ip in ips)

    return f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIPs: [10.96.0.50, fd00:10:96::50]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {{name: http, protocol: TCP, port: {web_port}, targetPort: {target}}}
  - {{name: echo, protocol: UDP, port: {web_port}, targetPort: {target}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: {target}}}
- {{name: echo, protocol: UDP, port: {target}}}
endpoints:
{endpoints(web)}---
apiVersion: v1
kind: Service
metadata: {{name: low, namespace: default}}
spec:
  clusterIP: 10.96.0.51
  ports:
  - {{name: http, protocol: TCP, port: {low_port}, targetPort: {target}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: low-1
  namespace: default
  labels: {{kubernetes.io/service-name: low}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: {target}}}
endpoints:
{endpoints(web[:1])}"""


def unprivileged(python_ok_as_nobody: bool) -> list[str]:
    """The setpriv prefix: nobody where it can read the code, else uid 0; no capabilities."""
    who = (
        ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        if python_ok_as_nobody
        else ["--reuid=0", "--regid=0", "--clear-groups"]
    )
    return ["setpriv", *who, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def nobody_can_run_kdns() -> bool:
    probe = subprocess.run(
        [*unprivileged(True), *kdns_command("--help")],
        capture_output=True,
        timeout=30,
        cwd="/",
    )
    return probe.returncode == 0


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def tcp_echo(address: tuple[str, int], line: bytes = b"hi") -> str:
    with socket.create_connection(address, timeout=3) as sock:
        sock.sendall(line + b"\n")
        with sock.makefile("rb") as reply:
            return reply.readline().decode().split(" ")[0]


def udp_echo(address: tuple[str, int]) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(b"hi", address)
        return sock.recv(65535).decode().split(" ")[0]


@dataclass
class Unprivileged:
    """A running `kdns serve --proxy userspace` without privileges, over one manifest file."""

    proc: subprocess.Popen[bytes]
    dns_port: int
    manifest: Path
    stderr_path: Path
    as_nobody: bool

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def vip_of(self, name: str) -> str:
        reply = ask(self.dns_port, f"{name}.default.svc.cluster.local", "A")
        (vip,) = rdata_texts(reply, "A")
        return vip

    def rewrite(self, text: str) -> None:
        write_atomically(self.manifest, text)
        os.chmod(self.manifest, 0o644)


@contextlib.contextmanager
def unprivileged_kdns(
    text: str, tmp_path: Path, first_name: str, *, by_env: bool = False
) -> Iterator[Unprivileged]:
    """Start kdns over a manifest holding `text`; wait until `first_name` resolves. The
    userspace proxy is asked for with `--proxy userspace`, or `KDNS_PROXY=userspace`."""
    need_root()  # to drop to nobody
    need_tool("setpriv", "util-linux")
    as_nobody = nobody_can_run_kdns()
    folder = Path(tempfile.mkdtemp(prefix="kdns-userspace-"))
    try:
        folder.chmod(0o755)  # readable by nobody
        manifest = folder / "cluster.yaml"
        manifest.write_text(text)
        manifest.chmod(0o644)
        dns_port = free_port()
        stderr_path = tmp_path / "stderr.log"
        command = [
            *unprivileged(as_nobody),
            *kdns_command(
                "serve",
                *(() if by_env else ("--proxy", "userspace")),
                "--manifests",
                str(folder),
                "--dns-addr",
                f"127.0.0.1:{dns_port}",
                *LOCAL_HTTP,
            ),
        ]
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT if as_nobody else "/",
                env={**os.environ, "KDNS_PROXY": "userspace"} if by_env else None,
            )
        server = Unprivileged(proc, dns_port, manifest, stderr_path, as_nobody)
        try:

            def answering() -> bool:
                try:
                    reply = ask(dns_port, f"{first_name}.default.svc.cluster.local", timeout=0.2)
                except (OSError, dns.exception.Timeout):
                    return False
                return bool(rdata_texts(reply, "A"))

            wait_answering(answering, proc, server.log, timeout=START_TIMEOUT)
            yield server
            assert proc.poll() is None, server.log()
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def connect_when_ready(address: tuple[str, int], proc: subprocess.Popen[bytes]) -> str:
    """The relay binds right after the first sync, as DNS starts answering: allow it a moment."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return tcp_echo(address)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)


def low_port_is_privileged() -> bool:
    """Whether binding LOW_PORT needs CAP_NET_BIND_SERVICE in this network namespace."""
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    return start > LOW_PORT


def test_a_pod_without_privileges_reaches_services_by_name(tmp_path: Path) -> None:
    with echo_backends(BACKENDS) as target:
        web_port = free_port("127.0.0.1")
        text = manifests(web_port, LOW_PORT, target, BACKENDS[:2])
        with unprivileged_kdns(text, tmp_path, "web") as server:
            run_scenario(server, web_port, target, low_port_is_privileged())


def bind_warnings(server: Unprivileged) -> list[str]:
    return [line for line in server.log().splitlines() if "cannot listen on" in line]


def run_scenario(server: Unprivileged, web_port: int, target: int, privileged: bool) -> None:
    proc, dns_port, log, vip_of = server.proc, server.dns_port, server.log, server.vip_of
    # No privileges: nobody (or root without capabilities), every capability set empty.
    assert status_field(proc.pid, "CapEff") == "0000000000000000"
    assert status_field(proc.pid, "CapPrm") == "0000000000000000"
    assert status_field(proc.pid, "CapBnd") == "0000000000000000"
    if server.as_nobody:
        assert status_field(proc.pid, "Uid").split()[0] == str(65534)

    # DNS: the loopback VIP, no AAAA (the ClusterIPv6 is unreachable here), PTR back.
    vip = vip_of("web")
    assert ipaddress.IPv4Address(vip) in VIP_RANGE
    aaaa = ask(dns_port, "web.default.svc.cluster.local", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert not aaaa.answer
    ptr = ask(dns_port, dns.reversename.from_address(vip).to_text(), "PTR")
    assert rdata_texts(ptr, "PTR") == {"web.default.svc.cluster.local."}

    connect_when_ready((vip, web_port), proc)
    names = {tcp_echo((vip, web_port)) for _ in range(12)}
    assert names == {"pod-11", "pod-12"}
    assert {udp_echo((vip, web_port)) for _ in range(12)} == {"pod-11", "pod-12"}

    low_vip = vip_of("low")
    if privileged:
        # Port 80 needs a capability here: one warning naming the sysctl; not relayed.
        warnings = bind_warnings(server)
        assert len(warnings) == 1, log()
        assert f"{low_vip} tcp/{LOW_PORT}" in warnings[0]
        assert "default/low:http" in warnings[0]
        assert "net.ipv4.ip_unprivileged_port_start" in warnings[0]
        with pytest.raises(ConnectionRefusedError):
            tcp_echo((low_vip, LOW_PORT))
    else:
        # Anyone may bind port 80 here: the Service is relayed like the others, silently.
        assert connect_when_ready((low_vip, LOW_PORT), proc) == "pod-11"
        assert bind_warnings(server) == [], log()

    # Endpoints change: the manifests now name pod-13 only (and low gets a new endpoint too).
    server.rewrite(manifests(web_port, LOW_PORT, target, BACKENDS[2:]))
    deadline = time.monotonic() + CHANGE_TIMEOUT
    while True:
        names = {tcp_echo((vip, web_port)) for _ in range(6)}
        if names == {"pod-13"}:
            break
        assert names <= {"pod-11", "pod-12", "pod-13"}
        assert time.monotonic() < deadline, f"still {names} after {CHANGE_TIMEOUT} s"
        time.sleep(0.1)
    assert {udp_echo((vip, web_port)) for _ in range(6)} == {"pod-13"}
    assert vip_of("web") == vip  # the VIP depends on the Services, not their endpoints
    if privileged:
        # Still one warning: a retried bind that fails again does not log again.
        assert len(bind_warnings(server)) == 1, log()
    else:
        # low's endpoint moved to pod-13 as well.
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while tcp_echo((low_vip, LOW_PORT)) != "pod-13":
            assert time.monotonic() < deadline, f"low not on pod-13 after {CHANGE_TIMEOUT} s"
            time.sleep(0.1)
        assert bind_warnings(server) == [], log()


def colliding_names() -> tuple[str, str]:
    """Two Service names in `default` whose first-choice VIPs are the same (a birthday search
    over 4 million addresses: about 2,500 names)."""
    first: dict[str, str] = {}
    for i in range(100_000):
        name = f"c{i}"
        (vip,) = allocate([("default", name)]).values()
        if vip in first:
            return tuple(sorted((first[vip], name)))  # type: ignore[return-value]
        first[vip] = name
    raise AssertionError("no collision in 100,000 names")


def two_services(names: tuple[str, ...], port: int, target: int) -> str:
    documents = []
    for name, backend in zip(names, BACKENDS, strict=False):
        documents.append(
            f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.96.1.{len(documents) + 1}
  ports: [{{name: http, protocol: TCP, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: {target}}}]
endpoints: [{{addresses: [{backend}]}}]
"""
        )
    return "---\n".join(documents)


def test_a_vip_taken_by_a_newcomer_moves_in_dns_and_in_the_relay(tmp_path: Path) -> None:
    # `first` sorts before `second` and wants the same address: when it arrives, `second`
    # (alone until then, at its first choice) moves on. The cached answer for `second` must go.
    first, second = colliding_names()
    with echo_backends(BACKENDS) as target:
        port = free_port("127.0.0.1")
        # `second` alone, with pod-12 behind it.
        text = two_services(("zz-unused", second), port, target).split("---\n", 1)[1]
        with unprivileged_kdns(text, tmp_path, second, by_env=True) as server:
            old_vip = server.vip_of(second)
            assert old_vip == allocate([("default", first)])[("default", first)]
            assert connect_when_ready((old_vip, port), server.proc) == "pod-12"
            server.rewrite(two_services((first, second), port, target))
            deadline = time.monotonic() + CHANGE_TIMEOUT
            while server.vip_of(second) == old_vip:
                assert time.monotonic() < deadline, "the moved VIP never reached DNS"
                time.sleep(0.1)
            new_vip = server.vip_of(second)
            assert server.vip_of(first) == old_vip
            assert (
                new_vip == allocate([("default", first), ("default", second)])[("default", second)]
            )
            assert tcp_echo((old_vip, port)) == "pod-11"  # first's endpoint now
            assert tcp_echo((new_vip, port)) == "pod-12"
