"""Real upstream DNS servers on loopback, for the forwarding tests.

- `dnsmasq(directory, ...)`: Debian's dnsmasq serving the test zone `test.` (and its reverse zone
  192.0.2.0/24) on 127.0.0.1 and a free port. Authoritative mode (`--auth-server` on the listen
  address, `--auth-zone`, `--auth-soa`) is what makes dnsmasq 2.90 put the zone's SOA into
  NXDOMAIN and NODATA answers; without it (`local=/test/`) negative answers carry no SOA, and
  RFC 2308 forbids caching them. Queries are counted from dnsmasq's own query log.
- `Responder(behaviour)`: a scriptable UDP+TCP server in a thread, for what no real server does
  on purpose: replies with the wrong ID or question before the genuine one, TC on UDP, silence,
  delays. It records each query's ID, source port and transport.

Everything listens on 127.0.0.1 only, every wait is bounded, and both stop at the end of their
`with` block.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, DNSLabel, DNSRecord

from kdns.dns.upstream_config import Upstream
from tests.conftest import need_tool
from tests.processes import stop_process

HOST = "127.0.0.1"
WAIT = 5.0  # seconds: the bound on any wait here (start-up, log sync)

# --- dnsmasq ------------------------------------------------------------------------------------

ZONE = "test"
WWW_V4, WWW_V6 = "192.0.2.10", "2001:db8::10"
MAIL_V4 = "192.0.2.25"
ACME_V4 = "192.0.2.200"  # www.acme.local, for the stub domain tests
TXT_TEXT = "hello world"
# The records every dnsmasq here serves, as dnsmasq options. In authoritative mode the
# host records also give PTRs in 2.0.192.in-addr.arpa (192.0.2.10 → www.test).
RECORD_OPTIONS = (
    f"--host-record=www.{ZONE},{WWW_V4},{WWW_V6}",
    f"--host-record=mail.{ZONE},{MAIL_V4}",
    f"--host-record=www.acme.local,{ACME_V4}",
    f"--txt-record=txt.{ZONE},{TXT_TEXT}",
    f"--mx-host={ZONE},mail.{ZONE},10",
)
_LOG_LINE = re.compile(r"dnsmasq\[\d+\]: (?:query|auth)\[(\w+)\] (\S+) from ")
_MARKER = "kdns-test-marker-"


@dataclass
class Dnsmasq:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    authoritative: bool
    _markers: Iterator[int] = field(default_factory=itertools.count)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def upstream(self) -> Upstream:
        return Upstream(HOST, self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sync(self) -> None:
        """Ask dnsmasq a marker question and wait until its log shows it: every query that
        reached dnsmasq before is then in the log too (the log is written in order)."""
        marker = f"{_MARKER}{next(self._markers)}.{ZONE}"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                udp_query(self.port, marker, "TXT", timeout=0.2)
            if f" {marker} from " in self.log():
                return
            time.sleep(0.02)
        raise AssertionError(f"dnsmasq did not log {marker} within {WAIT} s:\n{self.log()}")

    def queries(self) -> list[tuple[str, str]]:
        """(type, name) of every query dnsmasq received so far, markers left out."""
        self.sync()
        return [
            (qtype, name.lower().rstrip("."))
            for qtype, name in _LOG_LINE.findall(self.log())
            if not name.startswith(_MARKER)
        ]

    def count(self, name: str | None = None, qtype: str | None = None) -> int:
        return sum(
            1
            for t, n in self.queries()
            if (name is None or n == name.lower().rstrip(".")) and (qtype is None or t == qtype)
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, WAIT)


def dnsmasq_command(
    exe: str, port: int, log_path: Path, authoritative: bool, ttl: int, extra: Sequence[str]
) -> list[str]:
    command = [
        exe,
        "--no-resolv",  # never forwards anywhere: everything it knows is on this command line
        "--no-hosts",
        "--no-poll",
        "--keep-in-foreground",
        f"--port={port}",
        f"--listen-address={HOST}",
        "--bind-interfaces",
        "--user=root",  # the tests run as root; dnsmasq would otherwise switch to "nobody"
        "--pid-file=",
        "--log-queries",
        f"--log-facility={log_path}",
        *RECORD_OPTIONS,
    ]
    if authoritative:
        command += [
            # Authoritative on the listen address: AA, and the SOA in negative answers.
            f"--auth-server=ns.{ZONE},{HOST}",
            # With subnets given, dnsmasq serves only addresses inside them (and their PTRs).
            f"--auth-zone={ZONE},192.0.2.0/24,2001:db8::/64",
            "--auth-zone=acme.local",
            # serial, hostmaster, refresh, retry, expiry; the SOA's TTL and MINIMUM are auth-ttl.
            f"--auth-soa=1,hostmaster.{ZONE},1200,120,604800",
            f"--auth-ttl={ttl}",
        ]
    else:
        # A plain (recursive-looking) server: RA set, unknown names in the zone NXDOMAIN
        # (without an SOA), everything else REFUSED since there is nothing to forward to.
        command += [f"--local=/{ZONE}/", "--local=/acme.local/", f"--local-ttl={ttl}"]
    return [*command, *extra]


@contextlib.contextmanager
def dnsmasq(
    directory: Path,
    *,
    authoritative: bool = True,
    ttl: int = 600,
    extra: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[Dnsmasq]:
    """A running dnsmasq serving the test zone on 127.0.0.1; stopped when the block ends."""
    exe = need_tool("dnsmasq", "dnsmasq-base")
    directory.mkdir(parents=True, exist_ok=True)
    server: Dnsmasq | None = None
    for attempt in range(5):
        chosen = port if port is not None else free_port()
        log_path = directory / f"dnsmasq-{chosen}-{attempt}.log"
        command = dnsmasq_command(exe, chosen, log_path, authoritative, ttl, extra)
        with open(directory / f"dnsmasq-{chosen}-{attempt}.err", "wb") as err:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        candidate = Dnsmasq(proc, chosen, log_path, authoritative)
        if _wait_answering(candidate):
            server = candidate
            break
        candidate.stop()
        if port is not None:
            break
    if server is None:
        raise RuntimeError(f"dnsmasq did not start on {HOST} (see {directory})")
    try:
        yield server
    finally:
        server.stop()


def _wait_answering(server: Dnsmasq) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False  # e.g. the port was taken meanwhile
        try:
            # A marker name: left out of `queries()`, like the markers of `sync()`.
            udp_query(server.port, f"{_MARKER}start.{ZONE}", "TXT", timeout=0.2)
            return True
        except (OSError, TimeoutError):
            time.sleep(0.02)
    return False


# --- plain helpers ------------------------------------------------------------------------------


def free_port(attempts: int = 20) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(attempts):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind((HOST, 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for UDP and TCP after {attempts} attempts")


def udp_query(port: int, name: str, qtype: str = "A", timeout: float = 1.0) -> DNSRecord:
    """One blocking query over UDP to 127.0.0.1:port (raises TimeoutError)."""
    query = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        sock.send(query.pack())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = DNSRecord.parse(sock.recv(65535))
            if reply.header.id == query.header.id:
                return reply
        raise TimeoutError(f"no reply for {name} {qtype}")


# --- the scriptable responder -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One query as the responder received it."""

    data: bytes
    qid: int
    qname: str  # lower-case, no trailing dot
    qtype: int
    question: bytes  # the question section's bytes (name, type, class)
    tcp: bool
    port: int  # the client's source port
    at: float  # time.monotonic() on arrival

    @property
    def record(self) -> DNSRecord:
        return DNSRecord.parse(self.data)


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    delay: float = 0.0  # seconds after the query arrived


Behaviour = Callable[[Request], Sequence[Reply]]


def _question_end(data: bytes) -> int:
    pos = 12
    while data[pos]:
        pos += 1 + data[pos]
    return pos + 5


def parse_request(data: bytes, tcp: bool, port: int) -> Request | None:
    try:
        qid = struct.unpack_from("!H", data)[0]
        end = _question_end(data)
        labels, pos = [], 12
        while data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode("latin-1").lower())
            pos += 1 + data[pos]
        qtype = struct.unpack_from("!H", data, end - 4)[0]
    except (IndexError, struct.error):
        return None
    return Request(data, qid, ".".join(labels), qtype, data[12:end], tcp, port, time.monotonic())


class Responder:
    """A DNS server on 127.0.0.1 (UDP and TCP on one port) whose every reply a test scripts.

    `behaviour(request)` returns the replies to send, each after its own delay (an empty list:
    never answer). It runs on the responder's thread; `requests` is the record of every query.
    """

    def __init__(self, behaviour: Behaviour, port: int = 0) -> None:
        self.behaviour = behaviour
        self.requests: list[Request] = []
        self.port = port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._pending: list[tuple[float, int, socket.socket, tuple[str, int] | None, bytes]] = []
        self._seq = itertools.count()
        self.errors: list[BaseException] = []

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def upstream(self) -> Upstream:
        return Upstream(HOST, self.port)

    def count(self, name: str | None = None, *, tcp: bool | None = None) -> int:
        return sum(
            1
            for r in list(self.requests)
            if (name is None or r.qname == name.lower().rstrip("."))
            and (tcp is None or r.tcp == tcp)
        )

    def __enter__(self) -> Responder:
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                udp.bind((HOST, self.port))
                tcp.bind((HOST, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            tcp.listen(64)
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp, self._tcp = udp, tcp
            self.port = udp.getsockname()[1]
            break
        else:
            raise RuntimeError("no port free for the responder")
        self._thread = threading.Thread(target=self._run, name=f"responder-{self.port}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering and close the port (a later query gets ICMP port unreachable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT)
            assert not self._thread.is_alive(), "the responder thread did not stop"
            self._thread = None
        if self.errors:
            raise AssertionError(f"the responder's behaviour failed: {self.errors[0]!r}")

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._udp is not None and self._tcp is not None
        selector = selectors.DefaultSelector()
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "listen")
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._pending and self._pending[0][0] <= now:
                    _, _, sock, addr, data = heapq.heappop(self._pending)
                    with contextlib.suppress(OSError):
                        if addr is None:
                            sock.sendall(len(data).to_bytes(2) + data)
                        else:
                            sock.sendto(data, addr)
                timeout = 0.02
                if self._pending:
                    timeout = max(0.0, min(timeout, self._pending[0][0] - now))
                for key, _ in selector.select(timeout):
                    if key.data == "udp":
                        self._read_udp()
                    elif key.data == "listen":
                        with contextlib.suppress(OSError):
                            conn, _ = self._tcp.accept()
                            conn.settimeout(1.0)
                            buffers[conn] = bytearray()
                            selector.register(conn, selectors.EVENT_READ, "conn")
                    else:
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        if not self._read_tcp(conn, buffers[conn]):
                            selector.unregister(conn)
                            del buffers[conn]
                            conn.close()
        finally:
            for conn in buffers:
                conn.close()
            selector.close()
            self._udp.close()
            self._tcp.close()

    def _read_udp(self) -> None:
        assert self._udp is not None
        for _ in range(256):
            try:
                data, addr = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self._answer(data, self._udp, addr, tcp=False, port=addr[1])

    def _read_tcp(self, conn: socket.socket, buffer: bytearray) -> bool:
        try:
            chunk = conn.recv(65535)
        except OSError:
            return False
        if not chunk:
            return False
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2]):
            size = int.from_bytes(buffer[:2])
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            self._answer(message, conn, None, tcp=True, port=conn.getpeername()[1])
        return True

    def _answer(
        self, data: bytes, sock: socket.socket, addr: tuple[str, int] | None, tcp: bool, port: int
    ) -> None:
        request = parse_request(data, tcp, port)
        if request is None:
            return
        self.requests.append(request)
        try:
            replies = self.behaviour(request)
        except Exception as e:  # reported by stop(): a broken script must fail its test
            self.errors.append(e)
            return
        for reply in replies:
            due = request.at + reply.delay
            heapq.heappush(self._pending, (due, next(self._seq), sock, addr, reply.data))


# --- behaviours ---------------------------------------------------------------------------------


def response(
    request: Request,
    answers: Sequence[str] = (),
    authority: Sequence[str] = (),
    rcode: int = RCODE.NOERROR,
    *,
    tc: bool = False,
    qname: str | None = None,
    qid: int | None = None,
) -> bytes:
    """A reply to `request`: records as zone-file lines, the question echoed (or `qname`)."""
    record = request.record
    reply = record.reply(ra=1, aa=1)
    reply.header.rcode = rcode
    reply.header.tc = 1 if tc else 0
    if qid is not None:
        reply.header.id = qid
    if qname is not None:
        reply.questions[0].qname = DNSLabel(qname)
    for line in answers:
        reply.add_answer(*RR.fromZone(line))
    for line in authority:
        reply.add_auth(*RR.fromZone(line))
    return reply.pack()


def soa(zone: str, ttl: int = 60, minimum: int = 60) -> str:
    return f"{zone}. {ttl} IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 900 86400 {minimum}"


@dataclass
class Zone:
    """Answers from a table of zone-file lines: the records of the name and type asked, NODATA
    (with `soa`) for a known name without that type, NXDOMAIN (with `soa`) otherwise."""

    records: Sequence[str]
    soa: str | None = None
    rcode: int | None = None  # answer every question with this rcode instead (e.g. SERVFAIL)

    def __call__(self, request: Request) -> list[Reply]:
        return [Reply(self.reply(request))]

    def reply(self, request: Request) -> bytes:
        if self.rcode is not None:
            return response(request, rcode=self.rcode)
        matching, exists = [], False
        for line in self.records:
            rr = RR.fromZone(line)[0]
            if str(rr.rname).lower().rstrip(".") == request.qname:
                exists = True
                if rr.rtype == request.qtype or request.qtype == QTYPE.ANY:
                    matching.append(line)
        if matching:
            return response(request, matching)
        authority = [self.soa] if self.soa else []
        rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
        return response(request, authority=authority, rcode=rcode)


def fast_a(ip: str = "192.0.2.1", ttl: int = 60) -> Behaviour:
    """Every A question gets `ip`: built from bytes, for tests that send thousands."""
    rdata = socket.inet_aton(ip)

    def behave(request: Request) -> list[Reply]:
        header = struct.pack("!6H", request.qid, 0x8580, 1, 1, 0, 0)  # QR AA RD RA
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + rdata
        return [Reply(header + request.question + answer)]

    return behave


def delayed(behaviour: Behaviour, seconds: float) -> Behaviour:
    def behave(request: Request) -> list[Reply]:
        return [Reply(r.data, r.delay + seconds) for r in behaviour(request)]

    return behave


def silent(request: Request) -> list[Reply]:
    """A black hole: the query arrives and is never answered."""
    return []


def hostile(zone: Zone) -> Behaviour:
    """Over UDP, before the genuine answer, three replies a spoofer or a confused server might
    send: the wrong ID, the right ID with another question, and the right ID and question with
    the QR bit clear (a query, not a response); the first two claim 198.51.100.66."""

    def behave(request: Request) -> list[Reply]:
        if request.tcp:
            return zone(request)
        forged = [f"{request.qname}. 3600 IN A 198.51.100.66"]
        wrong_id = response(request, forged, qid=request.qid ^ 0x5A5A)
        wrong_question = response(
            request, ["evil.example. 3600 IN A 198.51.100.66"], qname="evil.example."
        )
        genuine = zone.reply(request)
        not_a_response = genuine[:2] + bytes((genuine[2] & 0x7F,)) + genuine[3:]
        return [
            Reply(wrong_id),
            Reply(wrong_question, 0.01),
            Reply(not_a_response, 0.02),
            Reply(genuine, 0.03),
        ]

    return behave


def truncating(zone: Zone) -> Behaviour:
    """UDP gets TC and no records; TCP gets the whole answer."""

    def behave(request: Request) -> list[Reply]:
        if request.tcp:
            return zone(request)
        return [Reply(response(request, tc=True))]

    return behave
