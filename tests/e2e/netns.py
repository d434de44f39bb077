"""Test hosts in network namespaces: a "node" and a "pod" joined by a veth pair.

Used by the glibc, resolver-matrix and autopath tests. Everything created is registered with
the caller's ExitStack before it is created, so it is removed even when a later step fails.
`pod_network` adds kdns on the node and a resolv.conf on the pod: a pod whose only nameserver
is kdns, with the test addresses existing only inside the two namespaces. `api_server_in`
starts a test API server listening inside a namespace (the node's), for processes run there;
`dig_status_and_records` reads `dig`'s output (run with DIG_ANSWER's options);
`node_upstream_dnsmasq` is the command of the outside upstream the autopath tests run on the
node's own loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kubeapi.server import ApiServer
from tests.processes import stop_process

CLONE_NEWNET = 0x40000000  # setns(2)


def ip_command(ip: str, *args: str) -> None:
    # Generous: creating a namespace waits for the kernel to finish tearing down earlier ones,
    # which takes seconds on a busy machine.
    result = subprocess.run([ip, *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def node_and_pod(ip: str, node: str, pod: str, cleanup: contextlib.ExitStack) -> None:
    """Namespaces `node` and `pod`, each with loopback up and an `eth0` joined to the other's."""
    # Deleting a namespace deletes the veth end inside it (and so the pair).
    cleanup.callback(subprocess.run, [ip, "netns", "del", node], capture_output=True)
    ip_command(ip, "netns", "add", node)
    cleanup.callback(subprocess.run, [ip, "netns", "del", pod], capture_output=True)
    ip_command(ip, "netns", "add", pod)
    # Created inside the node namespace with its peer inside the pod namespace: the pair never
    # appears in the host's namespace, so the names cannot collide with anything.
    ip_command(
        ip, "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pod
    )
    for ns in (node, pod):
        ip_command(ip, "-n", ns, "link", "set", "lo", "up")


# --- a pod whose only nameserver is kdns, on the node --------------------------------------------

NODE_V4, POD_V4 = "10.254.254.1", "10.254.254.2"
# IPv6 too, inside the namespaces only: getaddrinfo's AI_ADDRCONFIG (used by `getent ahosts`)
# asks for AAAA only when the host has a non-loopback IPv6 address, as a dual-stack pod has.
NODE_V6, POD_V6 = "fd00:254:254::1", "fd00:254:254::2"
NETNS_ETC = Path("/etc/netns")
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = "hosts: files dns\n"
# Environment variables that change what a stub resolver does; the pod must not inherit them.
RESOLVER_ENV = ("LOCALDOMAIN", "RES_OPTIONS", "HOSTALIASES", "GODEBUG", "RES_CONF")
ANSWER_TIMEOUT = 10.0  # seconds until kdns must answer from the pod's side

PROBE = """\
import sys, time
import dns.message, dns.query
deadline = time.monotonic() + float(sys.argv[2])
q = dns.message.make_query("dns-version.cluster.local", "TXT")
while time.monotonic() < deadline:
    try:
        dns.query.udp(q, sys.argv[1], timeout=0.2)
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(1)
"""


@dataclass
class PodNetwork:
    """kdns serving on the node side (NODE_V4:53); the pod side's /etc/resolv.conf, hosts and
    nsswitch.conf come from /etc/netns/<pod> (`ip netns exec` bind-mounts them over /etc/*)."""

    node: str
    pod: str
    kdns: subprocess.Popen[bytes]
    stderr_path: Path
    ip: str

    def run_in(
        self, ns: str, *command: str, timeout: float = 20, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in RESOLVER_ENV}
        return subprocess.run(
            [self.ip, "netns", "exec", ns, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**clean, **(env or {})},
        )

    def popen_in(self, ns: str, *command: str) -> subprocess.Popen[bytes]:
        """A background process in namespace `ns` (the caller stops it)."""
        return subprocess.Popen(
            [self.ip, "netns", "exec", ns, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def run_in_pod(
        self, *command: str, timeout: float = 20, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run_in(self.pod, *command, timeout=timeout, env=env)

    def getent(self, database: str, key: str) -> subprocess.CompletedProcess[str]:
        return self.run_in_pod("getent", database, key)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def remove_netns_etc(name: str) -> None:
    """Remove the /etc/netns/NAME files `ip netns exec` binds over a namespace's /etc."""
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    # /etc/netns itself only if we left it empty (another test run may be using it).
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()


@contextlib.contextmanager
def pod_network(
    ip: str, logs: Path, resolv_conf: str, kdns_args: Sequence[str]
) -> Iterator[PodNetwork]:
    """A node and a pod namespace joined by a veth pair (both families), the pod's resolv.conf
    `resolv_conf`, and `python -m kdns serve --dns-addr NODE_V4:53 KDNS_ARGS` running in the
    node namespace and answering the pod; everything removed when the block ends."""
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    node, pod = f"kdns-node-{suffix}", f"kdns-pod-{suffix}"
    stderr_path = logs / "kdns-stderr.log"
    with contextlib.ExitStack() as cleanup:
        node_and_pod(ip, node, pod, cleanup)
        for ns, v4, v6 in ((node, NODE_V4, NODE_V6), (pod, POD_V4, POD_V6)):
            ip_command(ip, "-n", ns, "addr", "add", f"{v4}/30", "dev", "eth0")
            ip_command(ip, "-n", ns, "addr", "add", f"{v6}/126", "dev", "eth0", "nodad")
            ip_command(ip, "-n", ns, "link", "set", "eth0", "up")

        cleanup.callback(remove_netns_etc, pod)
        etc = NETNS_ETC / pod
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(resolv_conf)
        (etc / "hosts").write_text(HOSTS)
        (etc / "nsswitch.conf").write_text(NSSWITCH)

        command = [ip, "netns", "exec", node, sys.executable, "-m", "kdns", "serve"]
        command += ["--dns-addr", f"{NODE_V4}:53", *kdns_args]
        with open(stderr_path, "wb") as err:
            kdns = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[2],
            )
        cleanup.callback(stop_process, kdns)
        network = PodNetwork(node, pod, kdns, stderr_path, ip)
        wait_answering(network)
        yield network
        assert kdns.poll() is None, f"kdns died during the tests:\n{network.stderr()}"


def wait_answering(network: PodNetwork, timeout: float = ANSWER_TIMEOUT) -> None:
    """Bounded wait until kdns answers a query sent from the pod's side; fail early if it exits."""
    command = [network.ip, "netns", "exec", network.pod, sys.executable, "-c", PROBE]
    probe = subprocess.Popen(
        [*command, NODE_V4, str(timeout)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout + 5
        while probe.poll() is None and network.kdns.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop_process(probe)
    if probe.returncode != 0:
        pytest.fail(
            f"kdns in {network.node} did not answer from {network.pod} "
            f"(waited up to {timeout} s; kdns exit status {network.kdns.poll()}):\n"
            f"{network.stderr()}"
        )


def api_server_in(netns: str, timeout: float) -> ApiServer:
    """A test API server whose listening socket lives in `netns`: made and started by a thread
    that entered the namespace, so its accept thread (and any rebind) is in there too."""
    made: list[ApiServer | BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(ApiServer(bookmark_interval=0.2).start())
        except BaseException as e:  # handed to the test thread
            made.append(e)

    thread = threading.Thread(target=inside, name=f"kubeapi-in-{netns}")
    thread.start()
    thread.join(timeout)
    assert made, "the API server did not start"
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


# `dig … +noall +comments +answer NAME A`, run in a pod: what the tests of the node DNS read.
DIG_ANSWER = ("+time=3", "+tries=2", "+noall", "+comments", "+answer")  # +tries: one lost
# datagram on a loaded machine is not a wrong answer


def dig_status_and_records(out: str) -> tuple[str, list[str]]:
    """The status (`NOERROR`, `NXDOMAIN`, …) and the answer records (`type data`) of `dig`'s
    output with DIG_ANSWER's options."""
    status = next((line for line in out.splitlines() if "status:" in line), "")
    status = status.split("status:")[-1].split(",")[0].strip()
    records = [
        " ".join(fields[3:])
        for line in out.splitlines()
        if line and not line.startswith(";") and len(fields := line.split()) >= 5
    ]
    return status, records


def node_upstream_dnsmasq(
    exe: str, host: str, address: str, log: Path, log_queries: bool = False
) -> list[str]:
    """dnsmasq on the node namespace's 127.0.0.1:53, knowing only `host` → `address`.

    Everything else under the host's parent domain is NXDOMAIN (AAAA of `host`: NODATA), not
    REFUSED; it forwards nothing. `log_queries` writes each query to `log`, for counting."""
    parent = host.split(".", 1)[1]
    return [
        exe,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--port=53",
        "--user=root",
        "--pid-file=",
        f"--host-record={host},{address}",
        f"--local=/{parent}/",
        *(["--log-queries"] if log_queries else []),
        f"--log-facility={log}",
    ]
