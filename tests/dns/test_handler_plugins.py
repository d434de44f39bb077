"""The handler with rewrite, template and hosts in front of the cluster zones (kdns/dns/plugins.py),
in CoreDNS's plugin order, as whole responses: rcode, flags, the client's question, and the
answer as zone-file text. No upstream here, so what no one answers is REFUSED."""

from __future__ import annotations

from dnslib import QTYPE, RCODE, DNSRecord

from kdns.config import Config
from kdns.dns.forward import Forwarder
from kdns.dns.handler import Deferred, Handler
from kdns.dns.plugins import Plugins
from kdns.dns.resolver import Resolver
from kdns.dns.upstream_config import ForwardConfig, Upstream
from kdns.dns.wire import Reply
from kdns.store import Store
from tests.dns.cluster import load, rrset, zone

NODE_HOSTS = "172.18.0.2 k3s-server\n"


def handler(**keys: object) -> Handler:
    config = Config().with_overrides(**keys)
    store = Store()
    resolver = Resolver(store, config)
    load(store)
    return Handler(
        resolver,
        plugins=Plugins.from_config(config, NODE_HOSTS),
        fallthrough=config.dns.fallthrough,
    )


def ask(h: Handler, name: str, qtype: str = "A") -> DNSRecord:
    reply = h.handle(bytes(DNSRecord.question(name, qtype).pack()), True)
    assert isinstance(reply, tuple), reply
    return DNSRecord.parse(reply[0])


def test_hosts_before_the_cluster_zones_and_its_fallthrough() -> None:
    h = handler(**{"hosts.file": "/NodeHosts", "hosts.ttl": 60, "hosts.fallthrough": ["."]})
    found = ask(h, "K3S-Server")
    assert (found.header.rcode, found.header.aa, str(found.q.qname)) == (0, 1, "K3S-Server.")
    assert rrset(found.rr) == zone("k3s-server. 60 IN A 172.18.0.2")
    redis = ask(h, "redis.default.svc.cluster.local")
    assert rrset(redis.rr) == zone("redis.default.svc.cluster.local. 5 IN A 10.97.97.97")
    # Not in hosts and outside the cluster zones, with no upstream: REFUSED, as before.
    assert ask(h, "www.example.org").header.rcode == RCODE.REFUSED


def test_hosts_without_fallthrough_is_servfail_for_every_other_name() -> None:
    # CoreDNS runs hosts before kubernetes: without fallthrough, it answers for every name.
    h = handler(**{"hosts.file": "/NodeHosts"})
    assert ask(h, "redis.default.svc.cluster.local").header.rcode == RCODE.SERVFAIL
    assert ask(h, "k3s-server").header.rcode == RCODE.NOERROR


def test_plugin_answers_are_not_kept_in_the_answer_cache() -> None:
    h = handler(**{"hosts.file": "/NodeHosts"})
    before = len(h.cache)
    ask(h, "k3s-server")
    assert len(h.cache) == before
    assert h.plugins is not None
    h.plugins.load_hosts_file("172.18.0.9 k3s-server\n")
    assert rrset(ask(h, "k3s-server").rr) == zone("k3s-server. 3600 IN A 172.18.0.9")


def test_template_nxdomain_and_a_miss_without_fallthrough() -> None:
    h = handler(
        **{"dns.templates": [{"zones": ["example.org"], "match": ["^bad[.]"], "rcode": "NXDOMAIN"}]}
    )
    assert ask(h, "bad.example.org", "TXT").header.rcode == RCODE.NXDOMAIN
    assert ask(h, "good.example.org").header.rcode == RCODE.SERVFAIL
    assert ask(h, "redis.default.svc.cluster.local").header.rcode == RCODE.NOERROR


def test_rewrite_to_a_service_answers_under_the_name_asked() -> None:
    h = handler(
        **{"dns.rewrites": [{"from": "cache.example.org", "to": "redis.default.svc.cluster.local"}]}
    )
    found = ask(h, "Cache.Example.Org")
    assert str(found.q.qname) == "Cache.Example.Org."
    assert rrset(found.rr) == zone("cache.example.org. 5 IN A 10.97.97.97")
    # An SRV question reaches the Service's SRV records the same way.
    srv = ask(h, "cache.example.org", "SRV")
    assert srv.header.rcode == RCODE.NOERROR and srv.rr and srv.rr[0].rtype == QTYPE.SRV
    # Rewritten to a name outside the zones, with no upstream: REFUSED.
    h2 = handler(**{"dns.rewrites": [{"from": "a.example", "to": "b.example"}]})
    assert ask(h2, "a.example").header.rcode == RCODE.REFUSED


def test_a_rewrite_that_makes_no_name_is_servfail() -> None:
    h = handler(**{"dns.rewrites": [{"match": "regex", "from": "^(.*)$", "to": "{1}{1}{1}{1}{1}"}]})
    assert ask(h, "a" * 60 + ".org").header.rcode == RCODE.SERVFAIL


def test_kubernetes_fallthrough_needs_an_upstream_to_fall_to() -> None:
    # No forwarder: NXDOMAIN stays NXDOMAIN (CoreDNS's NextOrFailure with nothing next).
    h = handler(**{"dns.fallthrough": ["cluster.local"]})
    missing = h.handle(bytes(DNSRecord.question("nope.default.svc.cluster.local").pack()), True)
    assert not isinstance(missing, Deferred)
    assert isinstance(missing, tuple)
    assert DNSRecord.parse(missing[0]).header.rcode == RCODE.NXDOMAIN


async def test_kubernetes_fallthrough_forwards_nxdomain_names_of_its_zones_only() -> None:
    # async: the upstream cache reads the trio clock
    config = Config().with_overrides(**{"dns.fallthrough": ["svc.cluster.local"]})
    store = Store()
    resolver = Resolver(store, config)
    load(store)
    forwarder = Forwarder(ForwardConfig(upstreams=(Upstream("127.0.0.1", 5300),)))
    h = Handler(resolver, forwarder=forwarder, fallthrough=config.dns.fallthrough)

    def handled(name: str) -> Reply | Deferred | None:
        return h.handle(bytes(DNSRecord.question(name).pack()), True)

    forwarded = handled("nope.default.svc.cluster.local")
    assert isinstance(forwarded, Deferred)
    assert forwarded.query.qname == "nope.default.svc.cluster.local"
    # Outside the fallthrough zones, and names that exist: answered here, as before.
    outside = handled("nope.pod.cluster.local")
    assert isinstance(outside, tuple)
    assert DNSRecord.parse(outside[0]).header.rcode == RCODE.NXDOMAIN
    found = handled("redis.default.svc.cluster.local")
    assert isinstance(found, tuple)
    assert DNSRecord.parse(found[0]).header.rcode == RCODE.NOERROR


def test_rewrite_to_an_external_name_service_without_upstreams_is_its_cname() -> None:
    h = handler(
        **{"dns.rewrites": [{"from": "web.example.org", "to": "ext.default.svc.cluster.local"}]}
    )
    found = ask(h, "web.example.org")
    assert found.header.rcode == RCODE.NOERROR
    assert rrset(found.rr) == zone("web.example.org. 5 IN CNAME www.example.com.")


async def test_autopath_finds_a_hosts_name_on_the_pods_search_path() -> None:
    # async: autopath answers in the listener's task (`complete`).
    config = Config().with_overrides(**{"hosts.file": "/NodeHosts", "hosts.fallthrough": ["."]})
    store = Store()
    resolver = Resolver(store, config)
    load(store)
    h = Handler(resolver, autopath=True, plugins=Plugins.from_config(config, NODE_HOSTS))
    question = bytes(DNSRecord.question("k3s-server.default.svc.cluster.local").pack())
    deferred = h.handle(question, True, client="10.244.1.5")  # pod p1, in default
    assert isinstance(deferred, Deferred) and deferred.search
    response = DNSRecord.parse((await h.complete(deferred))[0])
    assert response.header.rcode == RCODE.NOERROR
    assert rrset(response.rr) == zone(
        """k3s-server.default.svc.cluster.local. 3600 IN CNAME k3s-server.
        k3s-server. 3600 IN A 172.18.0.2"""
    )
