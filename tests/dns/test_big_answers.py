"""Large answers byte for byte as before: every answer the record builders and the encoder give
for a table of Services is the one kdns gave before they were rewritten for speed.

`tests/golden/big_answers.json` holds, per question, the length and SHA-256 of each answer the
handler gave at main fc4d0d0 (before the rewrite): over TCP (the first,
built from nothing, and two cache hits, which rotate the SRV and address RRsets), and over UDP
without EDNS (512 octets), with EDNS at 1,232 and at 4,096 octets (whole-record truncation).
After the questions the Services change (a rollout replaces a fifth of the endpoints, one
endpoint gets a hostname, one becomes not ready) and the questions are asked again, so answers
rebuilt from records kept across a change are checked too.

The table: headless Services with and without hostnames (500 endpoints), named ports of both
protocols and an unnamed one, dual-stack (a hostname in both families' slices), a ClusterIP
Service with endpoints, and reverse names. Regenerate (only when an answer is meant to change,
and say why in the commit) with `python -m tests.dns.test_big_answers write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from dnslib import EDNS0, DNSRecord

from kdns.config import Config
from kdns.dns.handler import Handler
from kdns.model import endpointslice_from_dict, service_from_dict
from kdns.store import ENDPOINTSLICES, SERVICES, Store
from tests.builders import api_endpoint, api_endpointslice, api_service
from tests.dns.cluster import make_handler

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "big_answers.json"
Z = "cluster.local"


def _slices(generation: int) -> list[dict[str, Any]]:
    """Every EndpointSlice of the table; `generation` 1 is the first state, 2 the rollout."""
    moved = 100 if generation == 2 else 0  # endpoints replaced by the rollout

    def v4(i: int) -> str:
        return f"10.{20 if i < moved else 1}.{i // 250}.{i % 250 + 1}"

    http = [{"name": "http", "port": 80, "protocol": "TCP"}]
    three = [
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"port": 8080, "protocol": "TCP"},
    ]
    plain = [api_endpoint(v4(i), ready=not (generation == 2 and i == 7)) for i in range(500)]
    named = [
        api_endpoint(f"10.3.{i // 250}.{i % 250 + 1}", hostname=f"web-{i}") for i in range(500)
    ]
    if generation == 2:
        plain[3] = api_endpoint(v4(3), hostname="late")
    return [
        api_endpointslice("big", "plain", "plain-a", plain[:300], http),
        api_endpointslice("big", "plain", "plain-b", plain[300:], http),
        api_endpointslice("big", "named", "named-a", named, three),
        api_endpointslice(
            "big",
            "dual",
            "dual-4",
            [api_endpoint(f"10.4.0.{i + 1}", hostname=f"db-{i}") for i in range(20)]
            + [api_endpoint(f"10.4.1.{i + 1 + generation}") for i in range(20)],
            three,
        ),
        api_endpointslice(
            "big",
            "dual",
            "dual-6",
            [api_endpoint(f"fd00:4::{i + 1:x}", hostname=f"db-{i}") for i in range(20)]
            + [api_endpoint(f"fd00:4:1::{i + generation:x}") for i in range(20)],
            three,
            family="IPv6",
        ),
        api_endpointslice(
            "big", "vip", "vip-a", [api_endpoint(f"10.5.0.{i + 1}") for i in range(60)], three
        ),
    ]


SERVICES_ = [
    api_service("big", "plain", clusterIP="None", ports=[{"name": "http", "port": 80}]),
    api_service("big", "named", clusterIP="None"),
    api_service("big", "dual", clusterIP="None", ipFamilies=["IPv4", "IPv6"]),
    api_service(
        "big",
        "vip",
        clusterIPs=["10.96.5.5", "fd00:96::5"],
        ports=[
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "alt", "port": 8080},
        ],
    ),
]

QUESTIONS = [
    (f"_http._tcp.plain.big.svc.{Z}", "SRV"),
    (f"plain.big.svc.{Z}", "SRV"),
    (f"plain.big.svc.{Z}", "A"),
    (f"plain.big.svc.{Z}", "ANY"),
    (f"10-1-0-4.plain.big.svc.{Z}", "A"),
    (f"late.plain.big.svc.{Z}", "A"),
    (f"_http._tcp.named.big.svc.{Z}", "SRV"),
    (f"_dns._udp.named.big.svc.{Z}", "SRV"),
    (f"named.big.svc.{Z}", "SRV"),
    (f"web-42.named.big.svc.{Z}", "A"),
    (f"_tcp.named.big.svc.{Z}", "SRV"),  # an empty non-terminal: NODATA
    (f"_http._tcp.dual.big.svc.{Z}", "SRV"),
    (f"dual.big.svc.{Z}", "SRV"),
    (f"dual.big.svc.{Z}", "AAAA"),
    (f"dual.big.svc.{Z}", "A"),
    (f"db-3.dual.big.svc.{Z}", "ANY"),
    (f"_http._tcp.vip.big.svc.{Z}", "SRV"),
    (f"vip.big.svc.{Z}", "SRV"),
    (f"vip.big.svc.{Z}", "AAAA"),
    (f"10-5-0-9.vip.big.svc.{Z}", "A"),
    ("4.0.1.10.in-addr.arpa", "PTR"),
    ("9.0.5.10.in-addr.arpa", "PTR"),
    ("5.5.96.10.in-addr.arpa", "PTR"),
]

# (how, EDNS payload size or None) for each question: TCP three times (built, then two cache
# hits with the next rotations), then UDP at three sizes.
ASKED = [("tcp", None)] * 3 + [("udp", None), ("udp", 1232), ("udp", 4096)]


def _load(store: Store, generation: int) -> None:
    if generation == 1:
        for service in SERVICES_:
            store.upsert(SERVICES, service_from_dict(service))
    for eps in _slices(generation):
        store.upsert(ENDPOINTSLICES, endpointslice_from_dict(eps))


def _query(qname: str, qtype: str, edns: int | None, qid: int) -> bytes:
    request = DNSRecord.question(qname, qtype)
    request.header.id = qid
    if edns is not None:
        request.add_ar(EDNS0(udp_len=edns))
    return bytes(request.pack())


def _ask(handler: Handler, data: bytes, udp: bool) -> bytes:
    reply = handler.handle(data, udp=udp)
    assert isinstance(reply, tuple), reply
    return reply[0]


def answers() -> dict[str, str]:
    """Each answer of the table, `generation:question:how` → "length sha256"."""
    # The SOA serial of a negative answer is the store's last change, from the wall clock.
    with mock.patch("kdns.store.time.time", return_value=1_750_000_000.0):
        return _answers()


def _answers() -> dict[str, str]:
    store, _, handler = make_handler(Config())
    out: dict[str, str] = {}
    qid = 0
    for generation in (1, 2):
        _load(store, generation)
        for qname, qtype in QUESTIONS:
            for i, (how, edns) in enumerate(ASKED):
                qid += 1
                response = _ask(handler, _query(qname, qtype, edns, qid), how == "udp")
                digest = hashlib.sha256(response).hexdigest()
                out[f"{generation}:{qname}/{qtype}:{i}:{how}:{edns}"] = f"{len(response)} {digest}"
    return out


def test_every_answer_of_the_table_is_as_before() -> None:
    golden = json.loads(GOLDEN.read_text())
    got = answers()
    assert got.keys() == golden.keys()
    differ = [key for key in golden if got[key] != golden[key]]
    assert not differ, f"{len(differ)} answers changed, the first: {differ[:5]}"


def test_the_table_holds_large_answers_and_truncations() -> None:
    # The table means something only if it has the shapes it claims: answers of ~40 KB over
    # TCP and cuts over UDP.
    golden = json.loads(GOLDEN.read_text())
    sizes = {key: int(value.split()[0]) for key, value in golden.items()}
    assert max(sizes.values()) > 30_000
    srv = f"1:_http._tcp.plain.big.svc.{Z}/SRV"
    assert sizes[f"{srv}:3:udp:None"] <= 512 < sizes[f"{srv}:0:tcp:None"]
    assert sizes[f"{srv}:4:udp:1232"] <= 1232


if __name__ == "__main__" and sys.argv[1:] == ["write"]:
    GOLDEN.write_text(json.dumps(answers(), indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
