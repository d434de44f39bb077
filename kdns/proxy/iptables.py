"""Routes → `iptables-restore` input with kube-proxy's chain layout, names and rule shapes.

Contract:
- `render_full(routes, config, existing_chains)` returns the whole `*filter` and `*nat` input
  kube-proxy's `syncProxyRules` (pkg/proxy/iptables/proxier.go) would write for one IP family,
  meant for `iptables-restore --noflush` (or `ip6tables-restore`): every chain line (`:CHAIN
  - [0:0]`, which also flushes it) comes before the rules, then `COMMIT`. Chains it does not
  name are left alone, so rules kdns does not own survive.
- `render_partial(routes, changed, config, existing_chains)` is kube-proxy's partial sync
  (KEP-3453): the fixed chains (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES, …) in
  full, but the per-service chains (KUBE-SVC-, KUBE-SVL-, KUBE-EXT-, KUBE-FW-, KUBE-SEP-) only
  for Services in `changed`; the others keep what the kernel has.
- In both, per-service chains in `existing_chains` that the rules no longer use are flushed and
  deleted (`-X`) in the same transaction; `Rendering.active_chains` is what the caller passes as
  `existing_chains` next time (or the chains `saved_chains` reads from `iptables-save -t nat`).
- The jumps from the built-in chains (PREROUTING → KUBE-SERVICES, …) are not in the restore
  input, as in kube-proxy (rewriting PREROUTING would clobber other owners' rules): `JUMP_RULES`
  lists them for the caller to ensure with `iptables -C` / `-I`. `render_cleanup` removes what
  kdns installed.
- Output is deterministic: routes in `route_sort_key` order, endpoints by address, stale chains
  sorted. Pure: no I/O; nothing here runs iptables.
- Deliberate differences from kube-proxy: no localhost NodePorts (CVE-2020-8558: NodePorts are
  never matched on 127.0.0.0/8, so no KUBE-FIREWALL chain and no route_localnet), no nfacct
  counters, one ClusterCIDR local-traffic detector (no NodeCIDR/interface detectors).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kdns.proxy.routes import (
    EXT_PREFIX,
    FW_PREFIX,
    SVC_PREFIX,
    SVL_PREFIX,
    JumpRule,
    RouteEndpoint,
    ServiceKey,
    ServicePortRoute,
    check_node_config,
    is_service_chain,
    masquerade_mark,
    port_proto_hash,
    route_sort_key,
    service_port_endpoint_chain_name,
)

# Fixed chains, pkg/proxy/iptables/proxier.go constants.
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"

# The "top-level" chains every sync writes in full, in kube-proxy's order.
FILTER_CHAINS = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
NAT_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# Above this many endpoints in total, kube-proxy's "large cluster mode" leaves the comments off
# the per-endpoint rules (largeClusterEndpointsThreshold): they are 40% of the input.
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True, slots=True)
class IptablesConfig:
    """What a render depends on besides the routes: one IP family's proxier settings."""

    family: int = 4  # 4: iptables-restore; 6: ip6tables-restore
    # This family's pod CIDR (--cluster-cidr): traffic to a ClusterIP from outside it is
    # masqueraded, and pod traffic to an external destination of an externalTrafficPolicy
    # Local Service is short-circuited to the Cluster chain (LocalTrafficDetector ClusterCIDR).
    cluster_cidr: str | None = None
    masquerade_all: bool = False  # --masquerade-all: masquerade every ClusterIP connection
    masquerade_bit: int = 14  # the mark is 1 << bit (0x4000)
    random_fully: bool = True  # MASQUERADE --random-fully (iptables ≥ 1.6.2 and the kernel)
    # This family's node IP: an LB source range containing it also admits the LB IPs as
    # sources (a node reaching a VIP-style LB IP that is local to it).
    node_ip: str | None = None
    # --nodeport-addresses resolved to this node's addresses; () means every local address.
    nodeport_ips: tuple[str, ...] = ()
    # nf_conntrack_tcp_be_liberal is set: no DROP of INVALID packets in KUBE-FORWARD (#74839).
    conntrack_tcp_be_liberal: bool = False
    large_cluster_endpoints: int = LARGE_CLUSTER_ENDPOINTS

    def __post_init__(self) -> None:
        check_node_config(
            self.family, self.masquerade_bit, self.cluster_cidr, self.node_ip, self.nodeport_ips
        )

    @property
    def masquerade_mark(self) -> str:
        return masquerade_mark(self.masquerade_bit)


@dataclass(frozen=True, slots=True)
class Rendering:
    """One restore input and what the caller needs to know about it."""

    text: str
    active_chains: frozenset[str]  # per-service nat chains the rules now use (written or kept)
    deleted_chains: tuple[str, ...]  # stale per-service chains this input flushes and deletes
    filter_rules: int  # `-A` lines written per table (the sync metrics)
    nat_rules: int
    partial: bool


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
# kube-proxy `iptablesJumpChains`, in its order (each is prepended, so the last ends up first).
JUMP_RULES = (
    JumpRule(
        "filter",
        "INPUT",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    JumpRule(
        "filter",
        "FORWARD",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        _NEW,
    ),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


def chain_line(chain: str) -> str:
    """`utiliptables.MakeChainLine`: declares the chain, and flushes it under --noflush."""
    return f":{chain} - [0:0]"


def probability(n: int) -> str:
    """kube-proxy `computeProbability`: 1/n as `%0.10f`."""
    return f"{1.0 / n:.10f}"


def stale_chains(existing: Iterable[str], active: Collection[str]) -> tuple[str, ...]:
    """The per-service chains in `existing` that `active` no longer uses, sorted.

    Chains that are not ours (no KUBE-SVC-/SVL-/EXT-/FW-/SEP- prefix) are never stale.
    """
    return tuple(sorted(c for c in set(existing) if c not in active and is_service_chain(c)))


def render_full(
    routes: Iterable[ServicePortRoute],
    config: IptablesConfig,
    existing_chains: Iterable[str] = (),
) -> Rendering:
    """The whole restore input: every chain of every route of `config.family`."""
    return _render(routes, config, None, existing_chains)


def render_partial(
    routes: Iterable[ServicePortRoute],
    changed: Collection[ServiceKey],
    config: IptablesConfig,
    existing_chains: Iterable[str] = (),
) -> Rendering:
    """kube-proxy's partial sync: the fixed chains, plus the per-service chains of `changed`.

    `changed` holds the keys of every Service whose Service object or endpoints changed since
    the last successful restore (deleted ones included). Valid only on top of a successful
    full or partial restore of the same config; after any failure, render in full.
    """
    return _render(routes, config, set(changed), existing_chains)


def _render(
    routes: Iterable[ServicePortRoute],
    config: IptablesConfig,
    changed: set[ServiceKey] | None,
    existing_chains: Iterable[str],
) -> Rendering:
    selected = sorted((r for r in routes if r.family == config.family), key=route_sort_key)
    mark = config.masquerade_mark
    filter_chains = [chain_line(c) for c in FILTER_CHAINS]
    filter_rules: list[str] = []
    nat_chains = [chain_line(c) for c in NAT_CHAINS]
    nat_rules = [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        # Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT"'
        f" -j MASQUERADE{' --random-fully' if config.random_fully else ''}",
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]
    active: set[str] = set()
    large = sum(len(r.endpoints) for r in selected) > config.large_cluster_endpoints
    for route in selected:
        # A partial sync leaves out the chains of unchanged Services (kube-proxy writes them
        # to a discarding buffer); they still count as active.
        write_chains = changed is None or route.service in changed
        _write_route(
            route, config, large, write_chains, filter_rules, nat_chains, nat_rules, active
        )

    deleted = stale_chains(existing_chains, active)
    for chain in deleted:
        # A chain line flushes it, so the -X cannot fail on rules still in it.
        nat_chains.append(chain_line(chain))
        nat_rules.append(f"-X {chain}")

    # The jump to KUBE-NODEPORTS must be the last rule of KUBE-SERVICES.
    comment = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if not config.nodeport_ips:
        loopback = "127.0.0.0/8" if config.family == 4 else "::1/128"
        nat_rules.append(
            f"-A {KUBE_SERVICES} -m comment --comment {comment}"
            f" -m addrtype --dst-type LOCAL ! -d {loopback} -j {KUBE_NODEPORTS}"
        )
    else:
        for ip in config.nodeport_ips:
            if ipaddress.ip_address(ip).is_loopback:
                continue  # no localhost NodePorts (CVE-2020-8558)
            nat_rules.append(
                f"-A {KUBE_SERVICES} -m comment --comment {comment} -d {ip} -j {KUBE_NODEPORTS}"
            )

    if not config.conntrack_tcp_be_liberal:
        # Packets conntrack calls INVALID would otherwise reach the pod un-DNATed and draw a
        # RST that kills the connection (#74839, #117924).
        filter_rules.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    # Forward what we marked for masquerade even where the FORWARD policy is DROP, and the
    # rest of those connections.
    filter_rules.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {mark}/{mark} -j ACCEPT"
    )
    filter_rules.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )

    text = "\n".join(
        [
            "*filter",
            *filter_chains,
            *filter_rules,
            "COMMIT",
            "*nat",
            *nat_chains,
            *nat_rules,
            "COMMIT",
            "",
        ]
    )
    return Rendering(
        text=text,
        active_chains=frozenset(active),
        deleted_chains=deleted,
        filter_rules=len(filter_rules),
        nat_rules=sum(1 for line in nat_rules if line.startswith("-A ")),
        partial=changed is not None,
    )


def _write_route(
    route: ServicePortRoute,
    config: IptablesConfig,
    large: bool,
    write_chains: bool,
    filter_rules: list[str],
    nat_chains: list[str],
    nat_rules: list[str],
    active: set[str],
) -> None:
    """One service port, in the order of kube-proxy's syncProxyRules loop body.

    The filter rules and the KUBE-SERVICES / KUBE-NODEPORTS rules are always written; the
    per-service chains only with `write_chains`, and otherwise only recorded in `active`.
    """
    proto = route.protocol.lower()
    name = route.name
    chain_hash = port_proto_hash(name, proto)
    cluster_chain = SVC_PREFIX + chain_hash
    local_chain = SVL_PREFIX + chain_hash
    external_chain = EXT_PREFIX + chain_hash
    fw_chain = FW_PREFIX + chain_hash
    match = f"-m {proto} -p {proto}"
    port = f"--dport {route.port}"

    uses_cluster_chain = route.uses_cluster_policy_chain
    uses_local_chain = route.uses_local_policy_chain
    # ClusterIP traffic goes to the chain of the internal policy; external traffic always
    # enters KUBE-EXT, which ends in the chain of the external policy.
    internal_chain = local_chain if route.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if route.external_policy_local else cluster_chain
    has_internal = route.has_internal_endpoints
    has_external = route.has_external_endpoints
    uses_external_chain = route.uses_external_traffic_chain
    uses_fw_chain = (
        route.has_endpoints
        and bool(route.load_balancer_ips)
        and bool(route.load_balancer_source_ranges)
    )
    lb_chain = fw_chain if uses_fw_chain else external_chain

    internal_target = external_target = ""
    internal_comment = external_comment = ""
    if not route.has_endpoints:
        # No usable endpoint anywhere: no nat chains, and a REJECT (connection refused at
        # once) in filter for every address of the service (#17359).
        internal_target = external_target = "REJECT"
        internal_comment = external_comment = f'"{name} has no endpoints"'
    else:
        if not has_internal:
            # internalTrafficPolicy Local and no local endpoint: drop, the client times out.
            internal_target = "DROP"
            internal_comment = f'"{name} has no local endpoints"'
        if not has_external:
            # externalTrafficPolicy Local and no local endpoint: drop what KUBE-EXT did not
            # short-circuit (traffic from outside the cluster).
            external_target = "DROP"
            external_comment = f'"{name} has no local endpoints"'

    # Capture the ClusterIP.
    if has_internal:
        nat_rules.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {match}'
            f" -d {route.cluster_ip} {port} -j {internal_chain}"
        )
    else:
        filter_rules.append(
            f"-A {KUBE_SERVICES} -m comment --comment {internal_comment} {match}"
            f" -d {route.cluster_ip} {port} -j {internal_target}"
        )

    # Capture externalIPs.
    for ip in route.external_ips:
        if route.has_endpoints:
            nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match}'
                f" -d {ip} {port} -j {external_chain}"
            )
        if not has_external:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} {match}"
                f" -d {ip} {port} -j {external_target}"
            )

    # Capture load-balancer ingress IPs.
    for ip in route.load_balancer_ips:
        if route.has_endpoints:
            nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match}'
                f" -d {ip} {port} -j {lb_chain}"
            )
        if uses_fw_chain:
            # What falls through KUBE-FW (not DNATed) is dropped here, in filter.
            filter_rules.append(
                f"-A {KUBE_PROXY_FIREWALL} -m comment"
                f' --comment "{name} traffic not accepted by {fw_chain}" {match}'
                f" -d {ip} {port} -j DROP"
            )
    if not has_external:
        for ip in route.load_balancer_ips:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} {match}"
                f" -d {ip} {port} -j {external_target}"
            )

    # Capture the NodePort. NodePorts are not subject to loadBalancerSourceRanges (as in
    # kube-proxy, which cannot change that now).
    if route.node_port:
        if route.has_endpoints:
            nat_rules.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match}"
                f" --dport {route.node_port} -j {external_chain}"
            )
        if not has_external:
            filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment}"
                f" -m addrtype --dst-type LOCAL {match}"
                f" --dport {route.node_port} -j {external_target}"
            )

    # Accept the health-check node port whether or not there are local endpoints.
    if route.health_check_node_port:
        filter_rules.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port"'
            f" -m tcp -p tcp --dport {route.health_check_node_port} -j ACCEPT"
        )

    # Below: the per-service chains, which a partial render leaves as they are.
    reachable = route.reachable_endpoints
    sep_chains = {
        ep.address: service_port_endpoint_chain_name(name, proto, ep.address) for ep in reachable
    }
    if not write_chains:
        active.update(sep_chains.values())
        for used, chain in (
            (uses_external_chain, external_chain),
            (uses_fw_chain, fw_chain),
            (uses_cluster_chain, cluster_chain),
            (uses_local_chain, local_chain),
        ):
            if used:
                active.add(chain)
        return

    # Masquerade ClusterIP traffic from outside the cluster: a static route for the Service
    # range may point at any node, and the reply must come back through that node.
    if has_internal:
        clusterip = f'-m comment --comment "{name} cluster IP" {match} -d {route.cluster_ip} {port}'
        if config.masquerade_all:
            nat_rules.append(f"-A {internal_chain} {clusterip} -j {KUBE_MARK_MASQ}")
        elif config.cluster_cidr:
            nat_rules.append(
                f"-A {internal_chain} {clusterip} ! -s {config.cluster_cidr} -j {KUBE_MARK_MASQ}"
            )

    if uses_external_chain:
        nat_chains.append(chain_line(external_chain))
        active.add(external_chain)
        if not route.external_policy_local:
            # Endpoints may be on other nodes: masquerade so replies come back through us.
            nat_rules.append(
                f"-A {external_chain} -m comment"
                f' --comment "masquerade traffic for {name} external destinations"'
                f" -j {KUBE_MARK_MASQ}"
            )
        else:
            # Local policy keeps the client's address. Pod traffic to an external address is
            # sent to the Cluster chain, as if it had gone out to the LB and come back in.
            if config.cluster_cidr:
                nat_rules.append(
                    f"-A {external_chain} -m comment"
                    f' --comment "pod traffic for {name} external destinations"'
                    f" -s {config.cluster_cidr} -j {cluster_chain}"
                )
            # Traffic from the node itself has a local source (often the LB IP): masquerade it
            # and send it to the Cluster chain too.
            nat_rules.append(
                f"-A {external_chain} -m comment"
                f' --comment "masquerade LOCAL traffic for {name} external destinations"'
                f" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            nat_rules.append(
                f"-A {external_chain} -m comment"
                f' --comment "route LOCAL traffic for {name} external destinations"'
                f" -m addrtype --src-type LOCAL -j {cluster_chain}"
            )
        if has_external:
            nat_rules.append(f"-A {external_chain} -j {external_policy_chain}")

    if uses_fw_chain:
        nat_chains.append(chain_line(fw_chain))
        active.add(fw_chain)
        # loadBalancerSourceRanges: only VIP-style LBs that keep the source address.
        head = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
        allow_from_node = False
        for cidr in route.load_balancer_source_ranges:
            nat_rules.append(f"{head} -s {cidr} -j {external_chain}")
            if config.node_ip and ipaddress.ip_address(config.node_ip) in ipaddress.ip_network(
                cidr, strict=False
            ):
                allow_from_node = True
        if allow_from_node:
            # A VIP-style LB IP is often local: the node's own request to it loops back with
            # the LB IP as its source.
            for ip in route.load_balancer_ips:
                nat_rules.append(f"{head} -s {ip} -j {external_chain}")
        nat_rules.append(
            f"-A {fw_chain} -m comment"
            f' --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"'
        )

    if uses_cluster_chain:
        nat_chains.append(chain_line(cluster_chain))
        active.add(cluster_chain)
        _write_endpoint_jumps(
            nat_rules, route, cluster_chain, route.cluster_endpoints, sep_chains, large
        )
    if uses_local_chain:
        nat_chains.append(chain_line(local_chain))
        active.add(local_chain)
        _write_endpoint_jumps(
            nat_rules, route, local_chain, route.local_endpoints, sep_chains, large
        )

    # One chain per endpoint: hairpin masquerade, then the DNAT.
    comment = "" if large else f" -m comment --comment {name}"
    for ep in reachable:
        sep = sep_chains[ep.address]
        nat_chains.append(chain_line(sep))
        active.add(sep)
        # A pod reaching itself through the VIP: SNAT to the node so the reply returns via us.
        nat_rules.append(f"-A {sep}{comment} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        affinity = f" -m recent --name {sep} --set" if route.affinity_timeout else ""
        nat_rules.append(
            f"-A {sep}{comment}{affinity} {match} -j DNAT --to-destination {ep.address}"
        )


def _write_endpoint_jumps(
    nat_rules: list[str],
    route: ServicePortRoute,
    chain: str,
    endpoints: tuple[RouteEndpoint, ...],
    sep_chains: Mapping[str, str],
    large: bool,
) -> None:
    """kube-proxy `writeServiceToEndpointRules`: affinity checks first, then the random spread.

    Rule i of n matches with probability 1/(n-i), so each endpoint gets 1/n overall; the last
    rule is unconditional.
    """
    name = route.name
    if route.affinity_timeout:
        for ep in endpoints:
            sep = sep_chains[ep.address]
            comment = "" if large else f' -m comment --comment "{name} -> {ep.address}"'
            nat_rules.append(
                f"-A {chain}{comment} -m recent --name {sep}"
                f" --rcheck --seconds {route.affinity_timeout} --reap -j {sep}"
            )
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        comment = "" if large else f' -m comment --comment "{name} -> {ep.address}"'
        spread = (
            f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        )
        nat_rules.append(f"-A {chain}{comment}{spread} -j {sep_chains[ep.address]}")


def chain_rules(text: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(table, chain) → its `-A` lines, from `iptables-save` output or restore input.

    A chain line (`:CHAIN …`, which under --noflush also flushes it) starts the chain empty; a
    `-X` removes it: for restore input, what each chain it names holds once it is applied."""
    chains: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in text.split("\n"):
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chains[(table, line[1:].split(" ", 1)[0])] = []
        elif line.startswith("-A "):
            chains.setdefault((table, line[3:].split(" ", 1)[0]), []).append(line)
        elif line.startswith("-X "):
            chains.pop((table, line[3:].strip()), None)
    return {key: tuple(lines) for key, lines in chains.items()}


def saved_chains(save_text: str) -> dict[str, frozenset[str]]:
    """The chains per table in `iptables-save` output (`utiliptables.GetChainsFromTable`)."""
    tables: dict[str, set[str]] = {}
    for table, chain in chain_rules(save_text):
        tables.setdefault(table, set()).add(chain)
    return {table: frozenset(chains) for table, chains in tables.items()}


def owned_chains(
    saved: Mapping[str, Iterable[str]], others: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """kdns's chains among `saved` (the chains per table that exist, `saved_chains`): per
    table, the fixed chains, then those in `others` (another mode's fixed chains, the canary),
    then every per-service chain, sorted. Tables with none are left out."""
    fixed = {"filter": FILTER_CHAINS, "nat": NAT_CHAINS}
    owned: dict[str, list[str]] = {}
    for table in ("filter", "nat"):
        existing = set(saved.get(table, ()))
        names = [*fixed[table], *(others or {}).get(table, ())]
        ours = [c for c in dict.fromkeys(names) if c in existing]
        if table == "nat":
            ours += sorted(c for c in existing if is_service_chain(c))
        if ours:
            owned[table] = ours
    return owned


def render_cleanup(
    saved: Mapping[str, Iterable[str]], others: Mapping[str, Sequence[str]] | None = None
) -> str:
    """Restore input that flushes and deletes every chain kdns installs (kube-proxy
    `CleanupLeftovers`): `owned_chains(saved, others)`.

    Delete the `JUMP_RULES` first (`iptables -D`), or the `-X` of a chain they jump to fails.
    Unlike kube-proxy, KUBE-MARK-MASQ and KUBE-PROXY-FIREWALL go too: kdns created them.
    """
    parts: list[str] = []
    for table, ours in owned_chains(saved, others).items():
        parts += [f"*{table}", *(chain_line(c) for c in ours), *(f"-X {c}" for c in ours)]
        parts.append("COMMIT")
    return "\n".join([*parts, ""]) if parts else ""


FixedChains = dict[tuple[str, str], tuple[str, ...]]


_FIXED = frozenset({("filter", c) for c in FILTER_CHAINS} | {("nat", c) for c in NAT_CHAINS})


def fixed_chain_rules(chains: Mapping[tuple[str, str], tuple[str, ...]]) -> FixedChains:
    """The fixed chains among `chain_rules` output."""
    return {key: rules for key, rules in chains.items() if key in _FIXED}


def omit_unchanged(text: str, applied: FixedChains) -> str:
    """A partial restore input without the fixed chains whose rules equal `applied` (what the
    kernel holds after the last successful restore): under --noflush a chain the input does not
    declare is left as it is. kube-proxy rewrites KUBE-SERVICES on every partial sync (10,000
    rules at 10k Services); an endpoint change does not alter it, so here it is not sent."""
    fixed = fixed_chain_rules(chain_rules(text))
    same = {key for key, rules in fixed.items() if applied.get(key) == rules}
    if not same:
        return text
    out = []
    table = ""
    for line in text.split("\n"):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith((":", "-A ")):
            chain = line[(1 if line[0] == ":" else 3) :].split(" ", 1)[0]
            if (table, chain) in same:
                continue
        out.append(line)
    return "\n".join(out)
