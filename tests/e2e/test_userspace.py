"""`kdns serve --proxy userspace` end to end, as a process with no privileges at all.

The real process runs as `nobody` with every capability dropped (setpriv); where this checkout is
not readable by `nobody`, as uid 0 with an empty capability bounding set, which is just as
unprivileged for binding and networking (no CAP_NET_BIND_SERVICE, no CAP_NET_ADMIN). A client
resolves the Service name through kdns with dnspython, connects to the answered loopback VIP and
reaches an echo endpoint (threads in this process on 127.1.0.x, replying with their name);
rewriting the manifests moves new connections within a few seconds; a Service port below
net.ipv4.ip_unprivileged_port_start gets one warning line and everything else still works.
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
from pathlib import Path

import dns.rcode
import dns.resolver
import dns.reversename
import pytest

from tests.conftest import need, need_root, need_tool
from tests.e2e.conftest import (
    LOCAL_HTTP,
    ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ask,
    free_port,
    kdns_command,
    rdata_texts,
    wait_answering,
    write_atomically,
)

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
        else ["--reuid=0", "--regid=0"]
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


def test_a_pod_without_privileges_reaches_services_by_name(tmp_path: Path) -> None:
    need_root()  # to drop to nobody
    need_tool("setpriv", "util-linux")
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    need(start > LOW_PORT, f"net.ipv4.ip_unprivileged_port_start is {start}: port 80 is free")
    as_nobody = nobody_can_run_kdns()
    folder = Path(tempfile.mkdtemp(prefix="kdns-userspace-"))
    try:
        folder.chmod(0o755)  # readable by nobody
        with echo_backends(BACKENDS) as target:
            web_port = free_port("127.0.0.1")
            manifest = folder / "cluster.yaml"
            manifest.write_text(manifests(web_port, LOW_PORT, target, BACKENDS[:2]))
            manifest.chmod(0o644)
            dns_port = free_port()
            stderr_path = tmp_path / "stderr.log"
            command = [
                *unprivileged(as_nobody),
                *kdns_command(
                    "serve",
                    "--proxy",
                    "userspace",
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
                )
            try:
                run_scenario(proc, dns_port, web_port, target, manifest, stderr_path, as_nobody)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=STOP_TIMEOUT)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_scenario(
    proc: subprocess.Popen[bytes],
    dns_port: int,
    web_port: int,
    target: int,
    manifest: Path,
    stderr_path: Path,
    as_nobody: bool,
) -> None:
    def log() -> str:
        return stderr_path.read_text(errors="replace")

    def vip_of(name: str) -> str:
        reply = ask(dns_port, f"{name}.default.svc.cluster.local", "A")
        (vip,) = rdata_texts(reply, "A")
        return vip

    def answering() -> bool:
        try:
            return bool(
                rdata_texts(ask(dns_port, "web.default.svc.cluster.local", "A", timeout=0.2))
            )
        except Exception:
            return False

    wait_answering(answering, proc, log, timeout=START_TIMEOUT)
    # No privileges: nobody (or root without capabilities), every capability set empty.
    assert status_field(proc.pid, "CapEff") == "0000000000000000"
    assert status_field(proc.pid, "CapPrm") == "0000000000000000"
    assert status_field(proc.pid, "CapBnd") == "0000000000000000"
    if as_nobody:
        assert status_field(proc.pid, "Uid").split()[0] == str(65534)

    # DNS: the loopback VIP, no AAAA (the ClusterIPv6 is unreachable here), PTR back.
    vip = vip_of("web")
    assert ipaddress.IPv4Address(vip) in VIP_RANGE
    aaaa = ask(dns_port, "web.default.svc.cluster.local", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert not aaaa.answer
    ptr = ask(dns_port, dns.reversename.from_address(vip).to_text(), "PTR")
    assert rdata_texts(ptr, "PTR") == {"web.default.svc.cluster.local."}

    # The relay is up once DNS is (both after the first sync); connect by name's answer.
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            names = {tcp_echo((vip, web_port)) for _ in range(12)}
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    assert names == {"pod-11", "pod-12"}
    assert {udp_echo((vip, web_port)) for _ in range(12)} == {"pod-11", "pod-12"}

    # The privileged port: one warning naming the sysctl; the Service is not relayed.
    low_vip = vip_of("low")
    warnings = [line for line in log().splitlines() if "cannot listen on" in line]
    assert len(warnings) == 1, log()
    assert f"{low_vip} tcp/{LOW_PORT}" in warnings[0]
    assert "default/low:http" in warnings[0]
    assert "net.ipv4.ip_unprivileged_port_start" in warnings[0]
    with pytest.raises(ConnectionRefusedError):
        tcp_echo((low_vip, LOW_PORT))

    # Endpoints change: the manifests now name pod-13 only (and low gets a new endpoint too).
    write_atomically(manifest, manifests(web_port, LOW_PORT, target, BACKENDS[2:]))
    os.chmod(manifest, 0o644)
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
    # Still one warning: a retried bind that fails again does not log again.
    assert len([line for line in log().splitlines() if "cannot listen on" in line]) == 1
    assert proc.poll() is None, log()
