"""End-to-end fixtures: kdns as a real subprocess on a real socket, and clients to ask it.

`kdns_factory(manifests, ...)` starts `python -m kdns serve` on 127.0.0.1 and a free port, waits
(bounded) until it answers a DNS query, and terminates it (SIGTERM, then SIGKILL) when the test
ends. `examples` is a tmp_path copy of config/examples that a test may edit; `examples_server`
is one shared server over an untouched copy, for the read-only client tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
HOST = "127.0.0.1"
QUERY_TIMEOUT = 2.0  # seconds, per DNS query
START_TIMEOUT = 10.0  # seconds until a started kdns must answer
CLI_TIMEOUT = 15.0  # seconds a `kdns check` or a failing `kdns serve` may take


def free_port(host: str = HOST, attempts: int = 20) -> int:
    """A port that is free for both UDP and TCP on `host` right now (closed before returning)."""
    last: OSError | None = None
    for _ in range(attempts):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            tcp.bind((host, port))
            return port
        except OSError as e:
            last = e
        finally:
            udp.close()
            tcp.close()
    raise RuntimeError(f"no port free for both UDP and TCP after {attempts} attempts: {last}")


# Several kdns processes run at once in the tests: each takes free ports for its probes and
# metrics instead of CoreDNS's fixed 8080, 8181 and 9153.
LOCAL_HTTP = (
    "--health-addr",
    f"{HOST}:0",
    "--ready-addr",
    f"{HOST}:0",
    "--metrics-addr",
    f"{HOST}:0",
)


def kdns_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdns", *args]


def run_kdns(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `python -m kdns ARGS` to completion (for `check` and start-up failures)."""
    return subprocess.run(
        kdns_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def make_query(
    name: str,
    rdtype: str | int = "A",
    rdclass: str | int = "IN",
    *,
    use_edns: int | bool | None = None,
    qid: int | None = None,
) -> dns.message.QueryMessage:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=use_edns)
    if qid is not None:
        q.id = qid
    return q


def ask(
    port: int,
    name: str,
    rdtype: str | int = "A",
    *,
    tcp: bool = False,
    host: str = HOST,
    rdclass: str | int = "IN",
    use_edns: int | bool | None = None,
    timeout: float = QUERY_TIMEOUT,
) -> dns.message.Message:
    """One query with dnspython over UDP (the TC bit is returned, not raised) or TCP."""
    q = make_query(name, rdtype, rdclass, use_edns=use_edns)
    if tcp:
        return dns.query.tcp(q, host, timeout=timeout, port=port)
    return dns.query.udp(q, host, timeout=timeout, port=port)


def rdata_texts(response: dns.message.Message, rdtype: str | None = None) -> set[str]:
    """The answer section's rdata as text (as `dig +short` prints it), optionally one type."""
    wanted = dns.rdatatype.from_text(rdtype) if rdtype else None
    return {
        rdata.to_text()
        for rrset in response.answer
        if wanted is None or rrset.rdtype == wanted
        for rdata in rrset
    }


@dataclass
class Kdns:
    """A running `kdns serve` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    manifests: tuple[Path, ...]
    args: tuple[str, ...] = field(default=())
    host: str = HOST

    def ask(
        self,
        name: str,
        rdtype: str | int = "A",
        *,
        tcp: bool = False,
        rdclass: str | int = "IN",
        use_edns: int | bool | None = None,
    ) -> dns.message.Message:
        return ask(
            self.port, name, rdtype, tcp=tcp, host=self.host, rdclass=rdclass, use_edns=use_edns
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)


def wait_answering(
    probe: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    describe: Callable[[], str],
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll `probe` until it is true; fail with `describe()` if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return
        if proc.poll() is not None:
            pytest.fail(f"kdns exited with {proc.returncode} before answering:\n{describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"kdns did not answer a DNS query within {timeout} s:\n{describe()}")
        time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        ask(port, "dns-version.cluster.local", "TXT", timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return True


def start_kdns(
    manifests: Sequence[Path],
    args: Sequence[str],
    stderr_path: Path,
) -> Kdns:
    """Start kdns on a free port; retry on a new port if another process took this one."""
    for _ in range(5):
        port = free_port()
        command = kdns_command("serve", "--dns-addr", f"{HOST}:{port}", *LOCAL_HTTP)
        for path in manifests:
            command += ["--manifests", str(path)]
        command += list(args)
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        server = Kdns(proc, port, stderr_path, tuple(manifests), tuple(args))
        try:
            wait_answering(lambda s=server: _answers(s.port), proc, server.stderr)
        except pytest.fail.Exception:
            server.stop()
            if "cannot listen" in server.stderr() or "Address already in use" in server.stderr():
                continue  # lost the race for the port to another process
            raise
        return server
    pytest.fail("kdns could not bind a free port in 5 attempts")


KdnsFactory = Callable[..., Kdns]


@pytest.fixture
def kdns_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KdnsFactory]:
    """`kdns_factory(manifests, *extra_args)` → a running, answering `Kdns`; stopped at teardown."""
    started: list[Kdns] = []
    logs = tmp_path_factory.mktemp("kdns-logs")

    def start(manifests: Path | Sequence[Path], *args: str) -> Kdns:
        paths = [manifests] if isinstance(manifests, Path) else list(manifests)
        server = start_kdns(paths, args, logs / f"stderr-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def copy_examples(dest: Path) -> Path:
    shutil.copytree(EXAMPLES, dest)
    return dest


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private, editable copy of config/examples."""
    return copy_examples(tmp_path / "manifests")


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdns]:
    """One kdns over config/examples (a copy), shared by a module's read-only tests."""
    base = tmp_path_factory.mktemp("examples-server")
    manifests = copy_examples(base / "manifests")
    server = start_kdns([manifests], (), base / "stderr.log")
    try:
        yield server
    finally:
        server.stop()
        # A crash during the module would otherwise go unnoticed: the tests only see timeouts.
        assert server.proc.returncode in (0, -signal.SIGTERM), server.stderr()


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` as editors and ConfigMap volumes do: write a sibling, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
