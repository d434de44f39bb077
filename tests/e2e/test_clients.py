"""kdns as its clients see it: dig, kdig and dnspython over real UDP and TCP sockets.

The cluster is config/examples (see its comments for what each name should answer). The read-only
tests share one server per module; tests that edit manifests or flags start their own.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.conftest import need_tool
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    EXAMPLES,
    HOST,
    QUERY_TIMEOUT,
    ROOT,
    Kdns,
    KdnsFactory,
    ask,
    copy_examples,
    free_port,
    make_query,
    rdata_texts,
    run_kdns,
    start_kdns,
    write_atomically,
)

HEADLESS_IPS = {"10.244.1.20", "10.244.2.21", "10.244.3.22"}

# --- clients -----------------------------------------------------------------------------------

CLIENTS = ("dnspython-udp", "dnspython-tcp", "dig-notcp", "dig-tcp", "kdig-notcp", "kdig-tcp")


def dig(port: int, *args: str) -> str:
    """`dig @127.0.0.1 -p PORT ARGS`; dig itself retries a truncated UDP answer over TCP."""
    exe = need_tool("dig", "bind9-dnsutils")
    result = subprocess.run(
        [exe, f"@{HOST}", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def kdig(port: int, *args: str) -> str:
    exe = need_tool("kdig", "knot-dnsutils")
    result = subprocess.run(
        [exe, f"@{HOST}", "-p", str(port), "+time=2", "+retry=0", *args],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def short(client: str, port: int, name: str, rdtype: str) -> set[str]:
    """The answer's rdata as `+short` prints it, from `client` (see CLIENTS)."""
    tool, transport = client.split("-")
    if tool == "dnspython":
        response = ask(port, name, rdtype, tcp=transport == "tcp")
        assert response.rcode() == dns.rcode.NOERROR, response
        return rdata_texts(response)
    run = dig if tool == "dig" else kdig
    out = run(port, "+short", f"+{transport}", name, rdtype)
    return {line for line in out.splitlines() if line and not line.startswith(";")}


def full(client: str, port: int, name: str, rdtype: str) -> str:
    """The whole text output of dig or kdig (for status, flags and sections)."""
    tool, transport = client.split("-")
    run = dig if tool == "dig" else kdig
    return run(port, f"+{transport}", name, rdtype)


# --- the example cluster, through every client -------------------------------------------------

POSITIVE = [
    pytest.param("redis.default.svc.cluster.local", "A", {"10.97.97.97"}, id="clusterip-A"),
    pytest.param("api.prod.svc.cluster.local", "A", {"10.96.50.50"}, id="dualstack-A"),
    pytest.param("api.prod.svc.cluster.local", "AAAA", {"fd00:10:96::50"}, id="dualstack-AAAA"),
    pytest.param("myapp-headless.default.svc.cluster.local", "A", HEADLESS_IPS, id="headless-A"),
    pytest.param(
        "web-0.myapp-headless.default.svc.cluster.local", "A", {"10.244.1.20"}, id="hostname-A"
    ),
    pytest.param(
        "_redis._tcp.redis.default.svc.cluster.local",
        "SRV",
        {"0 100 6379 redis.default.svc.cluster.local."},
        id="srv-named-port",
    ),
    pytest.param(
        "_http._tcp.myapp-headless.default.svc.cluster.local",
        "SRV",
        {
            "0 33 80 web-0.myapp-headless.default.svc.cluster.local.",
            "0 33 80 10-244-2-21.myapp-headless.default.svc.cluster.local.",
            "0 33 80 10-244-3-22.myapp-headless.default.svc.cluster.local.",
        },
        id="srv-headless",
    ),
    pytest.param(
        "97.97.97.10.in-addr.arpa", "PTR", {"redis.default.svc.cluster.local."}, id="ptr-clusterip"
    ),
    pytest.param(
        ipaddress.ip_address("fd00:10:96::50").reverse_pointer,
        "PTR",
        {"api.prod.svc.cluster.local."},
        id="ptr-clusterip-v6",
    ),
    pytest.param(
        # The Pod is an endpoint of both myapp (no hostname there: the subdomain names
        # myapp-headless) and myapp-headless (hostname web-0): one PTR per Service, as CoreDNS.
        "20.1.244.10.in-addr.arpa",
        "PTR",
        {
            "web-0.myapp-headless.default.svc.cluster.local.",
            "10-244-1-20.myapp.default.svc.cluster.local.",
        },
        id="ptr-headless-endpoint",
    ),
    pytest.param(
        "search.default.svc.cluster.local", "A", {"www.example.com."}, id="externalname-cname"
    ),
    pytest.param(
        "cache.prod.svc.cluster.local",
        "A",
        {"redis.default.svc.cluster.local.", "10.97.97.97"},
        id="externalname-chased-in-zone",
    ),
    pytest.param("10-244-1-10.default.pod.cluster.local", "A", {"10.244.1.10"}, id="pod-A"),
    pytest.param("dns-version.cluster.local", "TXT", {'"1.1.0"'}, id="dns-version-TXT"),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("name", "rdtype", "expected"), POSITIVE)
def test_answers(
    examples_server: Kdns, client: str, name: str, rdtype: str, expected: set[str]
) -> None:
    assert short(client, examples_server.port, name, rdtype) == expected


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_srv_carries_glue(examples_server: Kdns, tcp: bool) -> None:
    r = examples_server.ask("_redis._tcp.redis.default.svc.cluster.local", "SRV", tcp=tcp)
    assert r.flags & dns.flags.AA
    glue = {(rrset.name.to_text(), rdata.to_text()) for rrset in r.additional for rdata in rrset}
    assert ("redis.default.svc.cluster.local.", "10.97.97.97") in glue

    r = examples_server.ask("_http._tcp.myapp-headless.default.svc.cluster.local", "SRV", tcp=tcp)
    glue = {
        (rrset.name.to_text(), rdata.to_text())
        for rrset in r.additional
        if rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    }
    assert glue == {
        ("web-0.myapp-headless.default.svc.cluster.local.", "10.244.1.20"),
        ("10-244-2-21.myapp-headless.default.svc.cluster.local.", "10.244.2.21"),
        ("10-244-3-22.myapp-headless.default.svc.cluster.local.", "10.244.3.22"),
    }


@pytest.mark.parametrize("client", ["dig-notcp", "dig-tcp"])
def test_srv_glue_printed_by_dig(examples_server: Kdns, client: str) -> None:
    out = full(client, examples_server.port, "_redis._tcp.redis.default.svc.cluster.local", "SRV")
    additional = out.split(";; ADDITIONAL SECTION:", 1)[1]
    assert re.search(
        r"^redis\.default\.svc\.cluster\.local\.\s+\d+\s+IN\s+A\s+10\.97\.97\.97$", additional, re.M
    ), out


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_soa_at_the_apex(examples_server: Kdns, tcp: bool) -> None:
    r = examples_server.ask("cluster.local", "SOA", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    (rrset,) = r.answer
    assert rrset.name == dns.name.from_text("cluster.local")
    (soa,) = rrset
    assert soa.mname.to_text() == "ns.dns.cluster.local."
    assert soa.rname.to_text() == "hostmaster.cluster.local."
    assert soa.minimum == 5  # the record TTL: negative answers are cached as long as positive


# --- negative answers --------------------------------------------------------------------------

NEGATIVE = [
    pytest.param("nope.default.svc.cluster.local", "A", dns.rcode.NXDOMAIN, id="nxdomain"),
    pytest.param("redis.default.svc.cluster.local", "AAAA", dns.rcode.NOERROR, id="nodata"),
    pytest.param("nope.nons.svc.cluster.local", "A", dns.rcode.NXDOMAIN, id="nxdomain-namespace"),
    pytest.param("default.svc.cluster.local", "A", dns.rcode.NOERROR, id="nodata-namespace"),
    pytest.param("_tcp.redis.default.svc.cluster.local", "A", dns.rcode.NOERROR, id="nodata-ent"),
    pytest.param("1.2.3.4.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, id="nxdomain-reverse"),
    pytest.param("dns-version.cluster.local", "A", dns.rcode.NOERROR, id="nodata-dns-version"),
    pytest.param("api.prod.svc.cluster.local", "TXT", dns.rcode.NOERROR, id="nodata-txt"),
]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(("name", "rdtype", "rcode"), NEGATIVE)
def test_negative_answers(
    examples_server: Kdns, tcp: bool, name: str, rdtype: str, rcode: int
) -> None:
    r = examples_server.ask(name, rdtype, tcp=tcp)
    assert r.rcode() == rcode
    assert r.flags & dns.flags.AA
    assert r.answer == []
    # RFC 2308 §3: the zone's SOA in the authority section, so resolvers can cache the negative.
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA
    zone = "in-addr.arpa." if name.endswith(".arpa") else "cluster.local."
    assert soa.name.to_text() == zone


@pytest.mark.parametrize("client", ["dig-notcp", "dig-tcp", "kdig-notcp", "kdig-tcp"])
@pytest.mark.parametrize(
    ("name", "rdtype", "status"),
    [
        ("nope.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("redis.default.svc.cluster.local", "AAAA", "NOERROR"),
    ],
    ids=["nxdomain", "nodata"],
)
def test_negative_answers_as_tools_print_them(
    examples_server: Kdns, client: str, name: str, rdtype: str, status: str
) -> None:
    out = full(client, examples_server.port, name, rdtype)
    assert re.search(rf"status: {status}\b", out), out
    assert re.search(r"(?i)flags: qr aa\b", out), out
    assert re.search(r"(?i)ANSWER: 0[;,] AUTHORITY: 1\b", out), out
    assert re.search(r"^cluster\.local\.\s+\d+\s+IN\s+SOA\s+ns\.dns\.cluster\.local\.", out, re.M)


# --- the client's spelling ---------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_case_is_echoed(examples_server: Kdns, tcp: bool) -> None:
    # A lower-case query first, so the mixed-case one is answered from the answer cache, which
    # must patch the client's spelling in (docs/architecture.md §7); then a second spelling, also
    # cached.
    for spelling in (
        "redis.default.svc.cluster.local",
        "ReDiS.DeFaUlT.svc.cluster.local",
        "REDIS.default.SVC.Cluster.Local",
    ):
        r = examples_server.ask(spelling, "A", tcp=tcp)
        assert r.question[0].name.to_text() == spelling + "."
        (rrset,) = r.answer
        assert rrset.name.to_text() == spelling + "."
        assert rdata_texts(r) == {"10.97.97.97"}


def test_case_is_echoed_to_dig(examples_server: Kdns) -> None:
    out = dig(examples_server.port, "ReDiS.DeFaUlT.svc.cluster.local", "A")
    assert re.search(r"^;ReDiS\.DeFaUlT\.svc\.cluster\.local\.\s+IN\s+A$", out, re.M), out
    assert re.search(
        r"^ReDiS\.DeFaUlT\.svc\.cluster\.local\.\s+\d+\s+IN\s+A\s+10\.97\.97\.97$", out, re.M
    ), out


# --- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("name", "rdtype", "rdclass"),
    [
        ("example.com", "A", "IN"),
        ("cluster.local", "AXFR", "IN"),
        ("cluster.local", "IXFR", "IN"),
        ("version.bind", "TXT", "CH"),
        ("redis.default.svc.cluster.local", "A", "CH"),
    ],
    ids=["outside-zones", "axfr", "ixfr", "chaos-version", "chaos-in-zone"],
)
def test_refused(examples_server: Kdns, tcp: bool, name: str, rdtype: str, rdclass: str) -> None:
    if rdtype == "IXFR":
        q = dns.message.make_query(name, rdtype)
        soa = dns.rrset.from_text(dns.name.from_text(name), 0, "IN", "SOA", ". . 1 2 3 4 5")
        q.authority.append(soa)
        send = dns.query.tcp if tcp else dns.query.udp
        r = send(q, HOST, timeout=QUERY_TIMEOUT, port=examples_server.port)
    else:
        r = examples_server.ask(name, rdtype, rdclass=rdclass, tcp=tcp)
    assert r.rcode() == dns.rcode.REFUSED
    assert r.question[0].name == dns.name.from_text(name)
    assert r.question[0].rdtype == dns.rdatatype.from_text(rdtype)
    assert r.question[0].rdclass == dns.rdataclass.from_text(rdclass)
    assert r.answer == []


def test_refused_as_dig_prints_it(examples_server: Kdns) -> None:
    assert "status: REFUSED" in dig(examples_server.port, "example.com", "A")
    out = dig(examples_server.port, "-q", "version.bind", "-t", "TXT", "-c", "CH")
    assert "status: REFUSED" in out, out
    assert re.search(r"^;version\.bind\.\s+CH\s+TXT$", out, re.M), out
    out = dig(examples_server.port, "cluster.local", "AXFR")
    assert "Transfer failed" in out, out
    assert "SOA" not in out, out


# --- the wire: EDNS, odd opcodes, malformed packets ----------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("do", [False, True], ids=["no-do", "do"])
def test_edns_payload_and_do_bit(examples_server: Kdns, tcp: bool, do: bool) -> None:
    q = make_query("redis.default.svc.cluster.local", "A")
    q.use_edns(0, ednsflags=dns.flags.DO if do else 0, payload=4096)
    send = dns.query.tcp if tcp else dns.query.udp
    r = send(q, HOST, timeout=QUERY_TIMEOUT, port=examples_server.port)
    assert r.edns == 0
    assert r.payload == 1232
    assert bool(r.ednsflags & dns.flags.DO) == do  # RFC 3225 §3: DO is echoed
    assert rdata_texts(r) == {"10.97.97.97"}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_edns_version_1_gets_badvers(examples_server: Kdns, tcp: bool) -> None:
    q = make_query("redis.default.svc.cluster.local", "A")
    q.use_edns(1)
    send = dns.query.tcp if tcp else dns.query.udp
    r = send(q, HOST, timeout=QUERY_TIMEOUT, port=examples_server.port)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.answer == []


@pytest.mark.parametrize("opcode", [dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_other_opcodes_get_notimp(examples_server: Kdns, opcode: int) -> None:
    q = make_query("cluster.local", "SOA")
    q.set_opcode(opcode)
    data = udp_raw(examples_server.port, q.to_wire())
    qid, flags = int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big")
    assert qid == q.id
    assert flags & 0x8000  # QR
    assert dns.opcode.from_flags(flags) == opcode
    assert flags & 0xF == dns.rcode.NOTIMP


def test_malformed_queries_get_formerr_with_the_id(examples_server: Kdns) -> None:
    q = make_query("redis.default.svc.cluster.local", "A", qid=0x1234)
    two = bytearray(q.to_wire())
    two[4:6] = (2).to_bytes(2, "big")  # qdcount 2
    two += q.to_wire()[12:]
    trailing = q.to_wire() + b"junk"
    for packet in (bytes(two), trailing):
        data = udp_raw(examples_server.port, packet)
        assert data[:2] == b"\x12\x34"
        assert int.from_bytes(data[2:4], "big") & 0xF == dns.rcode.FORMERR


def test_responses_are_not_answered(examples_server: Kdns) -> None:
    # A packet with QR set is dropped (answering responses invites loops); the query sent right
    # after it on the same socket gets the first datagram back.
    response = make_query("redis.default.svc.cluster.local", "A", qid=1)
    response.flags |= dns.flags.QR
    query = make_query("myapp.default.svc.cluster.local", "A", qid=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        sock.connect((HOST, examples_server.port))
        sock.send(response.to_wire())
        sock.send(query.to_wire())
        r = dns.message.from_wire(sock.recv(65535))
    assert r.id == 2
    assert rdata_texts(r) == {"10.99.99.99"}


def test_tcp_unfinished_message_is_closed(examples_server: Kdns) -> None:
    # README: a TCP connection is closed 2 s into a message that never completes. The wait
    # (9 s) ends before the idle timeout (10 s) would close it: a close within it is the read
    # timeout's, however loaded the machine.
    with socket.create_connection((HOST, examples_server.port), timeout=9) as sock:
        sock.sendall(b"\x00\x40" + b"\x00" * 10)  # 64 bytes announced, 10 sent
        assert sock.recv(100) == b""


# --- truncation: a headless Service with 500 ready endpoints -----------------------------------

BIG_IPS = [f"10.246.{i // 250}.{i % 250 + 1}" for i in range(500)]
BIG_NAME = "big.default.svc.cluster.local"


def big_manifest() -> str:
    endpoints = "".join(f"- addresses: [{ip}]\n  conditions:\n    ready: true\n" for ip in BIG_IPS)
    return (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  namespace: default\n"
        "spec:\n  clusterIP: None\n  ports:\n  - name: http\n    port: 80\n"
        "---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-1\n"
        "  namespace: default\n  labels:\n    kubernetes.io/service-name: big\n"
        "addressType: IPv4\nports:\n- name: http\n  protocol: TCP\n  port: 80\n"
        f"endpoints:\n{endpoints}"
    )


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdns]:
    base = tmp_path_factory.mktemp("big")
    manifests = copy_examples(base / "manifests")
    (manifests / "big.yaml").write_text(big_manifest())
    server = start_kdns([manifests], (), base / "stderr.log")
    try:
        yield server
    finally:
        server.stop()


def udp_raw(port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        sock.sendto(wire, (HOST, port))
        data, _ = sock.recvfrom(65535)
        return data


@pytest.mark.parametrize(
    ("use_edns", "limit"),
    [(False, 512), (0, 1232)],
    ids=["no-edns-512", "edns-1232"],
)
def test_big_answer_is_truncated_over_udp(big_server: Kdns, use_edns: int | bool, limit: int):
    q = make_query(BIG_NAME, "A", use_edns=use_edns)
    if use_edns is not False:
        q.use_edns(0, payload=4096)  # a client may offer more; kdns caps at 1232 (DNS flag day)
    data = udp_raw(big_server.port, q.to_wire())
    assert len(data) <= limit
    r = dns.message.from_wire(data, ignore_trailing=False)
    assert r.id == q.id
    assert r.flags & dns.flags.TC
    assert r.rcode() == dns.rcode.NOERROR
    assert r.question == q.question  # RFC 1035 §4.1.1: the question is kept, so clients retry
    # ... and as many whole records as fit, for clients that keep what they got (musl < 1.2.4).
    kept = rdata_texts(r)
    assert len(kept) == sum(len(rrset) for rrset in r.answer) > (limit - 100) // 16
    assert kept < set(BIG_IPS)
    with pytest.raises(dns.message.Truncated):
        dns.query.udp(
            q, HOST, timeout=QUERY_TIMEOUT, port=big_server.port, raise_on_truncation=True
        )


def test_big_answer_whole_over_tcp_with_dnspython(big_server: Kdns) -> None:
    r = big_server.ask(BIG_NAME, "A", tcp=True)
    assert not r.flags & dns.flags.TC
    assert rdata_texts(r) == set(BIG_IPS)
    assert sum(len(rrset) for rrset in r.answer) == 500


def test_big_answer_with_dnspython_fallback(big_server: Kdns) -> None:
    q = make_query(BIG_NAME, "A")
    r, used_tcp = dns.query.udp_with_fallback(q, HOST, timeout=QUERY_TIMEOUT, port=big_server.port)
    assert used_tcp
    assert rdata_texts(r) == set(BIG_IPS)


@pytest.mark.parametrize("client", ["dig-notcp", "dig-tcp", "kdig-notcp", "kdig-tcp"])
def test_big_answer_whole_through_tools(big_server: Kdns, client: str) -> None:
    # Without +tcp, dig and kdig get TC over UDP and retry over TCP by themselves.
    tool, transport = client.split("-")
    run = dig if tool == "dig" else kdig
    extra = [f"+{transport}"] if transport == "tcp" else []
    out = run(big_server.port, "+short", *extra, BIG_NAME, "A")
    addresses = [line for line in out.splitlines() if line and not line.startswith(";")]
    assert len(addresses) == 500
    assert set(addresses) == set(BIG_IPS)


def test_dig_reports_the_tcp_retry(big_server: Kdns) -> None:
    out = dig(big_server.port, BIG_NAME, "A")
    assert "Truncated, retrying in TCP mode" in out
    assert re.search(r"ANSWER: 500\b", out), out


# --- TCP pipelining (RFC 7766 §6.2.1.1) --------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def test_tcp_pipelining(examples_server: Kdns) -> None:
    questions: list[tuple[str, str, set[str], int]] = [
        ("redis.default.svc.cluster.local", "A", {"10.97.97.97"}, dns.rcode.NOERROR),
        ("myapp.default.svc.cluster.local", "A", {"10.99.99.99"}, dns.rcode.NOERROR),
        ("api.prod.svc.cluster.local", "AAAA", {"fd00:10:96::50"}, dns.rcode.NOERROR),
        ("api.prod.svc.cluster.local", "A", {"10.96.50.50"}, dns.rcode.NOERROR),
        ("myapp-headless.default.svc.cluster.local", "A", HEADLESS_IPS, dns.rcode.NOERROR),
        ("dns-version.cluster.local", "TXT", {'"1.1.0"'}, dns.rcode.NOERROR),
        ("nope.default.svc.cluster.local", "A", set(), dns.rcode.NXDOMAIN),
        ("example.com", "A", set(), dns.rcode.REFUSED),
        ("10-244-1-10.default.pod.cluster.local", "A", {"10.244.1.10"}, dns.rcode.NOERROR),
        ("97.97.97.10.in-addr.arpa", "PTR", {"redis.default.svc.cluster.local."}, 0),
    ]
    queries: dict[int, tuple[dns.message.Message, set[str], int]] = {}
    wire = bytearray()
    for i in range(20):
        name, rdtype, expected, rcode = questions[i % len(questions)]
        if i >= len(questions):
            name = name.upper()  # the second round differs in spelling, so IDs must match
        q = make_query(name, rdtype, qid=4000 + i * 7)
        queries[q.id] = (q, expected, rcode)
        data = q.to_wire()
        wire += len(data).to_bytes(2, "big") + data
    with socket.create_connection((HOST, examples_server.port), timeout=QUERY_TIMEOUT) as sock:
        sock.sendall(wire)  # all 20 in one write
        answers: dict[int, dns.message.Message] = {}
        for _ in range(20):
            size = int.from_bytes(recv_exactly(sock, 2), "big")
            r = dns.message.from_wire(recv_exactly(sock, size))
            assert r.id not in answers, f"two answers for ID {r.id}"
            answers[r.id] = r
    assert set(answers) == set(queries)
    for qid, (q, expected, rcode) in queries.items():
        r = answers[qid]
        assert r.question[0].name.to_text() == q.question[0].name.to_text()
        assert r.question[0].rdtype == q.question[0].rdtype
        assert r.rcode() == rcode
        assert rdata_texts(r) == expected


# --- reload ------------------------------------------------------------------------------------

REDIS_V2 = """\
apiVersion: v1
kind: Service
metadata:
  name: redis
  namespace: default
spec:
  clusterIP: {ip}
  clusterIPs:
  - {ip}
  ports:
  - name: redis
    protocol: TCP
    port: 6379
---
apiVersion: v1
kind: Service
metadata:
  name: fresh
  namespace: default
spec:
  clusterIP: 10.97.97.100
  ports:
  - name: http
    port: 80
"""

# Line 6 is `spec:`; line 7 is indented with a tab.
REDIS_BROKEN = REDIS_V2.replace("\n  clusterIP: {ip}\n", "\n\tclusterIP: {ip}\n", 1)
BROKEN_LINE = 7


RELOAD_WAIT = 30.0  # the bound on waiting for a reload: generous; a passing test is far quicker


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Poll `check` every `interval` s; the seconds it took to hold, or None after `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def a_records(server: Kdns, name: str) -> set[str] | None:
    try:
        r = ask(server.port, name, "A", timeout=0.5)
    except dns.exception.Timeout:
        return None
    return rdata_texts(r, "A")


def test_reload(kdns_factory: KdnsFactory, examples: Path) -> None:
    server = kdns_factory(examples)
    redis = "redis.default.svc.cluster.local"
    fresh = "fresh.default.svc.cluster.local"
    # Warm the answer cache, so the reload has cached answers to drop.
    for _ in range(3):
        assert a_records(server, redis) == {"10.97.97.97"}
        assert ask(server.port, fresh).rcode() == dns.rcode.NXDOMAIN
        assert rdata_texts(ask(server.port, "97.97.97.10.in-addr.arpa", "PTR")) == {
            "redis.default.svc.cluster.local."
        }

    write_atomically(examples / "redis.yaml", REDIS_V2.format(ip="10.97.97.98"))
    took = wait_for(lambda: a_records(server, redis) == {"10.97.97.98"}, timeout=RELOAD_WAIT)
    assert took is not None, server.stderr()
    assert a_records(server, fresh) == {"10.97.97.100"}
    assert ask(server.port, "97.97.97.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert rdata_texts(ask(server.port, "98.97.97.10.in-addr.arpa", "PTR")) == {
        "redis.default.svc.cluster.local."
    }

    # A broken file: the error is logged with file and line, the last good state keeps serving.
    path = examples / "redis.yaml"
    write_atomically(path, REDIS_BROKEN.format(ip="10.97.97.99"))
    logged = wait_for(lambda: f"{path}:{BROKEN_LINE}:" in server.stderr(), timeout=RELOAD_WAIT)
    assert logged is not None, server.stderr()
    assert "tab" in server.stderr()
    assert server.alive()
    for _ in range(5):
        assert a_records(server, redis) == {"10.97.97.98"}
        assert a_records(server, fresh) == {"10.97.97.100"}
        assert a_records(server, "myapp.default.svc.cluster.local") == {"10.99.99.99"}

    # Fixed: the new state is served.
    write_atomically(path, REDIS_V2.format(ip="10.97.97.99"))
    took = wait_for(lambda: a_records(server, redis) == {"10.97.97.99"}, timeout=RELOAD_WAIT)
    assert took is not None, server.stderr()
    assert a_records(server, fresh) == {"10.97.97.100"}
    assert server.alive()


def test_reload_of_a_new_and_a_removed_file(kdns_factory: KdnsFactory, examples: Path) -> None:
    server = kdns_factory(examples)
    assert a_records(server, "api.prod.svc.cluster.local") == {"10.96.50.50"}
    (examples / "api.yaml").unlink()
    write_atomically(examples / "extra.yaml", REDIS_V2.split("---\n")[1])
    took = wait_for(
        lambda: (
            ask(server.port, "api.prod.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
            and a_records(server, "fresh.default.svc.cluster.local") == {"10.97.97.100"}
        ),
        timeout=RELOAD_WAIT,
    )
    assert took is not None, server.stderr()


def test_sigterm_stops_with_status_0(kdns_factory: KdnsFactory, examples: Path) -> None:
    server = kdns_factory(examples)
    server.proc.terminate()
    assert server.proc.wait(timeout=5) == 0


# --- start-up errors ---------------------------------------------------------------------------

BAD_MANIFESTS = [
    pytest.param(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n\tnamespace: default\n",
        5,
        "",
        "tab character",
        id="tab-indentation",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\n"
        "spec:\n  clusterIP: 10.0.0.300\n  ports:\n  - port: 80\n",
        7,
        "Service default/broken: spec.clusterIP",
        "not an IP address",
        id="bad-clusterIP",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\n"
        "spec:\n  clusterIP: 10.0.0.3\n  ports:\n  - name: http\n    port: 70000\n",
        10,
        "Service default/broken: spec.ports[0].port",
        "70000",
        id="port-70000",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Servise\nmetadata:\n  name: broken\n  namespace: default\n",
        2,
        "kind",
        "Servise",
        id="unknown-kind",
    ),
    pytest.param(
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\n"
        "spec:\n  clusterIP: 10.0.0.4\n",
        3,
        "Service: metadata.name",
        "missing",
        id="missing-name",
    ),
]


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "in-folder"])
@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize(("text", "line", "what", "message"), BAD_MANIFESTS)
def test_bad_manifest_exits_2_with_one_line(
    tmp_path: Path,
    command: str,
    as_folder: bool,
    text: str,
    line: int,
    what: str,
    message: str,
) -> None:
    if as_folder:
        target = copy_examples(tmp_path / "manifests")
        bad = target / "zz-bad.yaml"
    else:
        target = bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    args = ["--manifests", str(target)]
    if command == "serve":
        args += ["--dns-addr", f"{HOST}:{free_port()}"]
    result = run_kdns(command, *args, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kdns: {bad}:{line}: "), lines[0]
    assert what in lines[0]
    assert message in lines[0]
    assert result.stdout == ""


def test_check_examples() -> None:
    result = run_kdns("check", "--manifests", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert "config: ok (zones cluster.local, in-addr.arpa, ip6.arpa; ttl 5; pods insecure)" in (
        result.stdout
    )
    assert re.search(
        r"manifests: ok \(2 namespaces, 6 services, \d+ endpoint slices, \d+ pods\)", result.stdout
    ), result.stdout
    assert re.search(
        r"records per zone: .*\bA \d+, AAAA \d+, CNAME 2, PTR \d+, SRV \d+", (result.stdout)
    ), result.stdout


def test_check_shipped_config() -> None:
    result = run_kdns(
        "check", "--config", str(ROOT / "config" / "kdns.yaml"), "--manifests", str(EXAMPLES)
    )
    assert result.returncode == 0, result.stderr
    assert "config: ok" in result.stdout


def test_serve_without_manifests_exits_2() -> None:
    result = run_kdns("serve", "--dns-addr", f"{HOST}:{free_port()}", timeout=10)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdns: ") and "--manifests" in lines[0]


def test_serve_on_a_taken_port_exits_2() -> None:
    # A bind error must reach cli.py as a plain OSError (not wrapped in trio's ExceptionGroup),
    # so it becomes one line and exit status 2 rather than a traceback. The port is held by a
    # socket without SO_REUSEPORT: another kdns on it would share it on purpose (kdns binds
    # with SO_REUSEPORT so a restarted process takes over without a gap, as CoreDNS does).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
        result = run_kdns("serve", "--manifests", str(EXAMPLES), "--dns-addr", f"{HOST}:{port}")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert lines == [f"kdns: cannot listen on {HOST}:{port}: Address already in use"]


# --- config file -------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_config_ttl(kdns_factory: KdnsFactory, tmp_path: Path, tcp: bool) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("# kdns config\nttl: 30\n")
    server = kdns_factory(EXAMPLES, "--config", str(config))
    r = server.ask("redis.default.svc.cluster.local", "A", tcp=tcp)
    assert [rrset.ttl for rrset in r.answer] == [30]
    r = server.ask("_redis._tcp.redis.default.svc.cluster.local", "SRV", tcp=tcp)
    assert {rrset.ttl for rrset in (*r.answer, *r.additional)} == {30}
    r = server.ask("nope.default.svc.cluster.local", "A", tcp=tcp)
    (soa,) = r.authority
    assert soa.ttl == 30 and soa[0].minimum == 30
    out = dig(server.port, "+noall", "+answer", "redis.default.svc.cluster.local", "A")
    assert re.search(r"\s30\s+IN\s+A\s+10\.97\.97\.97", out), out


def test_ttl_flag_overrides_config(kdns_factory: KdnsFactory, tmp_path: Path) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("ttl: 30\n")
    server = kdns_factory(EXAMPLES, "--config", str(config), "--ttl", "7")
    r = server.ask("redis.default.svc.cluster.local", "A")
    assert [rrset.ttl for rrset in r.answer] == [7]


def test_config_names_manifests_and_zones(kdns_factory: KdnsFactory, tmp_path: Path) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text(f"zones: [cluster.local, in-addr.arpa]\nmanifests:\n- {EXAMPLES}\n")
    server = kdns_factory([], "--config", str(config))
    assert rdata_texts(server.ask("redis.default.svc.cluster.local")) == {"10.97.97.97"}
    assert server.ask("97.97.97.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NOERROR
    # ip6.arpa is no longer ours.
    ptr6 = ipaddress.ip_address("fd00:10:96::50").reverse_pointer
    assert server.ask(ptr6, "PTR").rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("command", ["serve", "check"])
def test_config_unknown_key_exits_2(tmp_path: Path, command: str) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text("# kdns config\nttl: 30\nzonez:\n- cluster.local\n")
    args = ["--config", str(config), "--manifests", str(EXAMPLES)]
    if command == "serve":
        args += ["--dns-addr", f"{HOST}:{free_port()}"]
    result = run_kdns(command, *args, timeout=CLI_TIMEOUT)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kdns: {config}:3: zonez: unknown key"), lines[0]


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("ttl: 30\npods: sometimes\n", 2, "pods"),
        ("ttl: -1\n", 1, "ttl"),
        ("zones: [cluster.local]\nttl: [5]\n", 2, "ttl"),
    ],
    ids=["pods", "negative-ttl", "ttl-list"],
)
def test_config_bad_value_exits_2(tmp_path: Path, text: str, line: int, key: str) -> None:
    config = tmp_path / "kdns.yaml"
    config.write_text(text)
    result = run_kdns("check", "--config", str(config), "--manifests", str(EXAMPLES))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kdns: {config}:{line}: {key}: "), lines[0]


def test_a_file_written_in_place_is_not_read_half_way(
    kdns_factory: KdnsFactory, examples: Path
) -> None:
    # `kubectl get -o yaml > file` empties the file, then fills it: kdns must not serve the
    # empty state in between, or clients would cache NXDOMAIN for names that exist.
    server = kdns_factory(examples)
    redis = "redis.default.svc.cluster.local"
    assert a_records(server, redis) == {"10.97.97.97"}
    seen: set[str] = set()
    with open(examples / "redis.yaml", "w") as f:
        f.flush()  # the file is now empty on disk, for longer than a few polls
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen.add(dns.rcode.to_text(ask(server.port, redis).rcode()))
            time.sleep(0.02)
        f.write(REDIS_V2.format(ip="10.97.97.98"))
    took = wait_for(lambda: a_records(server, redis) == {"10.97.97.98"}, timeout=RELOAD_WAIT)
    assert took is not None, server.stderr()
    assert seen == {"NOERROR"}, f"answers while the file was being written: {seen}"


def test_a_file_emptied_on_purpose_is_believed_after_a_while(
    kdns_factory: KdnsFactory, examples: Path
) -> None:
    server = kdns_factory(examples)
    redis = "redis.default.svc.cluster.local"
    assert a_records(server, redis) == {"10.97.97.97"}
    (examples / "redis.yaml").write_text("")
    took = wait_for(
        lambda: ask(server.port, redis).rcode() == dns.rcode.NXDOMAIN, timeout=RELOAD_WAIT
    )
    assert took is not None, server.stderr()
    # Not before the emptied file held still for EMPTIED_SETTLE (2 s), less the poll that saw
    # it first; how much later depends on the machine's load, and is not asserted.
    assert took > 1.5
