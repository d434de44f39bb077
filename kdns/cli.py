"""The command line: `kdns serve`, `kdns check`, `kdns explain` and `kdns proxy`; exit 2 with one
clear line per problem.

Contract:
- `main(argv)` returns the exit status: 0 on success (and after a graceful stop), 2 for a bad
  config, bad manifests or a missing source (each problem one line on stderr, naming the file,
  line and field), 128 + N when a second signal N cut the lameduck short.
- The steps `main` takes, each public: `parse_args(argv)` is the command line as argparse reads
  it; `config_of(args)` the config it gives (below); `proxy_options(config)` the options
  `kdns proxy` runs with; `key_flags()` names the flag that sets each config key.
- Flags override `KDNS_*` environment variables, which override the config file, which
  overrides the defaults; a reload (SIGHUP, SIGUSR1, a changed file) applies them in the same
  order again.
- `kdns check` starts nothing and contacts no cluster: it validates the config (and the files it
  names: upstreams, stub domains, a kube-dns ConfigMap) and, when manifests are given by flag or
  config, loads them and prints what would be served. Without manifests it checks the config
  alone.
- `--corefile FILE` reads a CoreDNS Corefile instead of `--config` (kdns/corefile/): `check`
  first prints the kdns config it gives, as YAML; a directive kdns would not follow as CoreDNS
  does is one line each and exit 2, for `check`, `serve` and a reload alike.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio
from dnslib import QTYPE

# The Corefile translator and `kdns explain` are imported where they are used, so that a
# start without them (`kdns serve --manifests`, the common case) does not load them.
from kdns import app, logs, proxyapp
from kdns.config import POD_MODES, PROXY_MODES, Config, ConfigError, apply_env, load_config
from kdns.proxy import sysctls
from kdns.sources.static import ManifestSource
from kdns.synced import wait_synced

log = logging.getLogger("kdns")


# The flag that sets each config key (`dns.addr` → `--dns-addr`), to name it in messages.
_FLAGS: dict[str, str] = {}


def _key_flag(parser: argparse.ArgumentParser, flag: str, path: str, **options: Any) -> None:
    """A flag whose destination is the path of the config key it sets."""
    _FLAGS[path] = flag
    parser.add_argument(flag, dest=path, **options)


def _seconds_flag(parser: argparse.ArgumentParser, flag: str, path: str, help: str) -> None:
    """A key flag taking a duration in seconds (a float)."""
    _key_flag(parser, flag, path, type=float, metavar="SECONDS", help=help)


def _switch_flag(parser: argparse.ArgumentParser, flag: str, path: str, help: str) -> None:
    """A key flag that turns its key on; left out, it is None, so the file and the environment
    keep their say."""
    _key_flag(parser, flag, path, action="store_true", default=None, help=help)


def _address_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, str, str]]) -> None:
    """Key flags taking a listen address, one per (flag, config key, help)."""
    for flag, path, text in flags:
        _key_flag(parser, flag, path, metavar="HOST:PORT", help=text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`argv` (None: `sys.argv[1:]`) as argparse reads it: `command` names the command, each
    config flag's destination is the path of its key (`--dns-addr` sets `dns.addr`), None when
    the flag is left out. A bad command line exits 2 with argparse's usage line."""
    return _parser().parse_args(argv)


def key_flags() -> dict[str, str]:
    """Every config key a flag sets → the flag (`dns.addr` → `--dns-addr`); two commands may
    share a flag for keys of their own sections (`--metrics-addr`)."""
    _parser()  # declares them
    return dict(_FLAGS)


def _parser() -> argparse.ArgumentParser:
    """The whole command line: `serve`, `check`, `explain` and `proxy`, each with the common
    flags (`_common_flags`) and its own."""
    parser = argparse.ArgumentParser(
        prog="kdns", description="An in-cluster DNS server for Kubernetes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="answer DNS for the cluster")
    _common_flags(serve)
    _serve_flags(serve)
    check = commands.add_parser(
        "check", help="validate a config and manifests and print what would be served"
    )
    _common_flags(check)
    _explain_parser(commands, _common_flags)
    _proxy_parser(commands, _common_flags)
    return parser


def _common_flags(p: argparse.ArgumentParser) -> None:
    """The flags every command takes: the config, the sources, the records and the logs."""
    p.add_argument("--config", metavar="FILE", help="YAML config file (every key has a default)")
    p.add_argument(
        "--corefile",
        metavar="FILE",
        help="a CoreDNS Corefile, served as CoreDNS would (instead of --config)",
    )
    _kubernetes_flags(p)
    _key_flag(p, "--zones", "dns.zones", metavar="ZONE", nargs="+", help="authoritative zones")
    _key_flag(p, "--ttl", "dns.ttl", type=int, metavar="SECONDS", help="TTL of cluster records (5)")
    _key_flag(p, "--pods", "dns.pods", choices=POD_MODES, help="pod records mode (insecure)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _key_flag(
        p,
        "--log-format",
        "logging.format",
        choices=logs.LOG_FORMATS,
        help="log lines as text or JSON",
    )


def _kubernetes_flags(p: argparse.ArgumentParser) -> None:
    """Where the cluster comes from: manifest files or a live cluster."""
    _key_flag(
        p,
        "--manifests",
        "kubernetes.manifests",
        metavar="PATH",
        action="append",
        help="a Kubernetes manifest file or folder (repeatable); re-read when it changes",
    )
    _key_flag(
        p,
        "--kubeconfig",
        "kubernetes.kubeconfig",
        metavar="FILE",
        help="follow a live cluster (default: $KUBECONFIG, else in-cluster when in a pod)",
    )
    _key_flag(
        p, "--context", "kubernetes.context", metavar="NAME", help="the kubeconfig context to use"
    )


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    """`kdns serve`'s own flags: listen addresses, forwarding, lifecycle and features."""
    _address_flags(
        serve,
        (
            ("--dns-addr", "dns.addr", "DNS listen address (0.0.0.0:53)"),
            ("--health-addr", "dns.health_addr", "/health (0.0.0.0:8080)"),
            ("--ready-addr", "dns.ready_addr", "/ready (0.0.0.0:8181)"),
            ("--metrics-addr", "dns.metrics_addr", "/metrics (0.0.0.0:9153)"),
        ),
    )
    _forward_flags(serve)
    _seconds_flag(
        serve,
        "--lameduck",
        "dns.lameduck",
        "after SIGTERM, /ready says 503 and DNS keeps answering this long (5)",
    )
    _seconds_flag(
        serve,
        "--reload-interval",
        "dns.reload_interval",
        "how often the config file is checked for a change; 0: only on SIGHUP (2)",
    )
    _serve_feature_flags(serve)


def _forward_flags(serve: argparse.ArgumentParser) -> None:
    """Where names outside the cluster's zones go."""
    _key_flag(
        serve,
        "--upstreams",
        "forward.upstreams",
        metavar="IP[:PORT]",
        nargs="*",
        help="where to forward other names (default: /etc/resolv.conf; none: no forwarding)",
    )
    _key_flag(
        serve,
        "--kube-dns-configmap",
        "forward.kube_dns_configmap",
        metavar="FILE",
        help="a kube-dns ConfigMap whose stubDomains and upstreamNameservers to use",
    )


def _serve_feature_flags(serve: argparse.ArgumentParser) -> None:
    """What `kdns serve` does besides answering: query log, CoreDNS metric names, autopath,
    the userspace proxy."""
    _key_flag(
        serve,
        "--query-log",
        "logging.query_log",
        nargs="?",
        const="text",
        choices=("text", "json", "false"),
        help="log every query as CoreDNS's log plugin does (text, the default) or as JSON",
    )
    _switch_flag(
        serve,
        "--metrics-coredns-names",
        "dns.metrics_coredns_names",
        "also export the metrics CoreDNS has under its names (coredns_dns_requests_total, …)",
    )
    _switch_flag(
        serve,
        "--autopath",
        "dns.autopath",
        "answer a pod's search path server-side (CoreDNS autopath @kubernetes)",
    )
    _key_flag(
        serve,
        "--proxy",
        "dns.proxy",
        choices=PROXY_MODES,
        help="userspace: relay Services from loopback VIPs and answer those in DNS (none)",
    )


def _cidrs(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _proxy_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`kdns proxy`: the common flags, then the node, sync, listen, conntrack and node DNS
    flags, then --render or --cleanup."""
    proxy = commands.add_parser(
        "proxy", help="program this node's data path for Services (a minimal kube-proxy)"
    )
    common(proxy)
    _key_flag(proxy, "--mode", "proxy.mode", choices=proxyapp.MODES, help="(proxy.mode: iptables)")
    _node_flags(proxy)
    _proxy_sync_flags(proxy)
    _address_flags(
        proxy,
        (
            ("--healthz-addr", "proxy.healthz_addr", "/healthz and /livez (0.0.0.0:10256)"),
            ("--metrics-addr", "proxy.metrics_addr", "/metrics (127.0.0.1:10249)"),
        ),
    )
    _conntrack_flags(proxy)
    _node_dns_flags(proxy)
    what = proxy.add_mutually_exclusive_group()
    what.add_argument(
        "--render", action="store_true", help="print the rules it would apply; change nothing"
    )
    what.add_argument(
        "--cleanup",
        action="store_true",
        help="remove what any mode installed (iptables, nftables, IPVS), and nothing else",
    )


def _node_flags(proxy: argparse.ArgumentParser) -> None:
    """This node: its name, the pod CIDRs and the addresses NodePorts are served on."""
    _key_flag(
        proxy,
        "--node-name",
        "node.name",
        metavar="NAME",
        help="this node's name: endpoints on it are local ($NODE_NAME, else the hostname)",
    )
    for flag, path, text in (
        (
            "--cluster-cidr",
            "node.cluster_cidrs",
            "the pod CIDR (one per family): traffic from outside it is masqueraded",
        ),
        (
            "--nodeport-addresses",
            "node.nodeport_addresses",
            "serve NodePorts only on the node's addresses inside these (default: all)",
        ),
    ):
        _key_flag(
            proxy,
            flag,
            path,
            metavar="CIDR[,CIDR]",
            type=_cidrs,
            action="extend",
            default=None,
            help=text,
        )


def _proxy_sync_flags(proxy: argparse.ArgumentParser) -> None:
    """How the proxy syncs its rules: periods, masquerading, the IPVS scheduler."""
    _seconds_flag(
        proxy,
        "--min-sync-period",
        "proxy.min_sync_period",
        "at most one sync per this period; changes in between are coalesced (1)",
    )
    _seconds_flag(
        proxy,
        "--sync-period",
        "proxy.sync_period",
        "sync and check the rules for tampering at least this often (30)",
    )
    _switch_flag(
        proxy, "--masquerade-all", "proxy.masquerade_all", "SNAT all traffic to ClusterIPs"
    )
    _key_flag(
        proxy,
        "--ipvs-scheduler",
        "proxy.ipvs_scheduler",
        metavar="NAME",
        help="IPVS scheduler (rr)",
    )


def _conntrack_flags(proxy: argparse.ArgumentParser) -> None:
    """The conntrack sysctls the proxy sets at start, under kube-proxy's flag names."""
    # kube-proxy's conntrack flags (seconds where it takes durations), set at start
    # (proxy/sysctls.py); 0 leaves a sysctl alone.
    for flag, unit, text in (
        ("max-per-core", "N", "nf_conntrack_max per CPU, raised only (32768; 0: leave it)"),
        ("min", "N", "the floor of nf_conntrack_max (131072)"),
        ("tcp-timeout-established", "SECONDS", "nf_conntrack_tcp_timeout_established (86400)"),
        ("tcp-timeout-close-wait", "SECONDS", "nf_conntrack_tcp_timeout_close_wait (3600)"),
        ("udp-timeout", "SECONDS", "nf_conntrack_udp_timeout (0: leave it)"),
        ("udp-timeout-stream", "SECONDS", "nf_conntrack_udp_timeout_stream (0: leave it)"),
    ):
        _key_flag(
            proxy,
            f"--conntrack-{flag}",
            f"proxy.conntrack_{flag.replace('-', '_')}",
            type=int,
            metavar=unit,
            help=text,
        )
    _switch_flag(
        proxy,
        "--conntrack-tcp-be-liberal",
        "proxy.conntrack_tcp_be_liberal",
        "set nf_conntrack_tcp_be_liberal=1 (kube-proxy's flag)",
    )


def _node_dns_flags(proxy: argparse.ArgumentParser) -> None:
    """NodeLocal DNSCache from the proxy's own store: --dns and --dns-autopath."""
    _key_flag(
        proxy,
        "--dns",
        "node.dns",
        metavar="ADDR[,ADDR]",
        type=_cidrs,
        nargs="?",
        const=[proxyapp.NODE_DNS_DEFAULT],
        default=None,
        help=f"also answer DNS on these addresses, port 53 ({proxyapp.NODE_DNS_DEFAULT} when "
        "given alone): NodeLocal DNSCache from the proxy's own store",
    )
    _switch_flag(
        proxy,
        "--dns-autopath",
        "node.dns_autopath",
        "with --dns: answer this node's pods' search path server-side (CoreDNS autopath "
        "@kubernetes); watches the Pods of this node (RBAC: list, watch pods)",
    )


def proxy_options(config: Config) -> proxyapp.ProxyOptions:
    """The proxy and node sections (file < KDNS_* < flag, already merged by `config_of`) as the
    proxy takes them, unchecked (`proxyapp.check_options`); the node's name falls back to
    $NODE_NAME, then the host name; the sysctls are the node's (/proc/sys)."""
    proxy, node = config.proxy, config.node
    return proxyapp.ProxyOptions(
        mode=proxy.mode,
        node_name=app.node_name(node.name),
        cluster_cidrs=node.cluster_cidrs,
        nodeport_addresses=node.nodeport_addresses,
        min_sync_period=proxy.min_sync_period,
        sync_period=proxy.sync_period,
        masquerade_all=proxy.masquerade_all,
        healthz_addr=proxy.healthz_addr,
        metrics_addr=proxy.metrics_addr,
        ipvs_scheduler=proxy.ipvs_scheduler,
        dns_addresses=node.dns,
        dns_autopath=node.dns_autopath,
        conntrack=sysctls.Conntrack(
            max_per_core=proxy.conntrack_max_per_core,
            min=proxy.conntrack_min,
            tcp_timeout_established=proxy.conntrack_tcp_timeout_established,
            tcp_timeout_close_wait=proxy.conntrack_tcp_timeout_close_wait,
            tcp_be_liberal=proxy.conntrack_tcp_be_liberal,
            udp_timeout=proxy.conntrack_udp_timeout,
            udp_timeout_stream=proxy.conntrack_udp_timeout_stream,
        ),
        sysctl_root=proxyapp.SYSCTL_ROOT,
    )


def _refuse(problem: ConfigError | app.StartupError, who: str = "kdns") -> int:
    """One line per problem on stderr, and the exit status for a start that cannot be."""
    from kdns.corefile.load import CorefileRefused

    several = isinstance(problem, app.StartupError | CorefileRefused)
    lines = problem.lines if several else [str(problem)]
    for line in lines:
        print(f"{who}: {line}", file=sys.stderr)
    return 2


def _proxy(args: argparse.Namespace, config: Config) -> int:
    options = proxy_options(config)
    problems = proxyapp.check_options(options)
    if problems:
        for line in problems:
            print(f"kdns proxy: {line}", file=sys.stderr)
        return 2
    try:
        if args.cleanup:
            failures = proxyapp.cleanup()
            for line in failures:
                print(f"kdns proxy: cleanup: {line}", file=sys.stderr)
            return 1 if failures else 0
        if args.render:
            sys.stdout.write(trio.run(proxyapp.render, config, options))
            return 0
        trio.run(proxyapp.run_proxy, config, options)
    except app.StartupError as e:
        return _refuse(e, "kdns proxy")
    except OSError as e:
        print(f"kdns proxy: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def config_of(args: argparse.Namespace) -> Config:
    """The config the parsed command line `args` gives: its file (`--config`, or the Corefile
    `--corefile` translates; neither: the defaults), then the `KDNS_*` environment, then the
    flags. Raises ConfigError naming the file, line and field, or the flag that set a bad
    value; `kdns serve` logs the Corefile's translation notes."""
    if args.corefile and args.config:
        raise ConfigError("--corefile and --config: give one of them")
    if args.corefile:
        from kdns.corefile.load import load_corefile

        config, translation = load_corefile(args.corefile, os.environ)
        if args.command == "serve":  # `check` prints them
            for note in translation.notes:
                log.info("%s", note)
    else:
        config = load_config(args.config) if args.config else Config()
    # The environment overrides the file, flags override both. A flag's destination is the path
    # of its key (`--dns-addr` sets `dns.addr`); a bad value is named by its flag.
    config = apply_env(config, os.environ)
    for path, value in vars(args).items():
        if "." not in path or value is None:
            continue
        try:
            config = config.with_overrides(**{path: value})
        except ConfigError as e:
            raise ConfigError(f"{_FLAGS[path]}: {e.problem}", key=path) from None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "explain":
        return _explain(args)
    try:
        if args.command == "check" and args.corefile:
            _print_corefile(args.corefile)
        config = config_of(args)
        logs.setup(config.logging.format, args.log_level, config.logging.consolidate)
        if args.command == "proxy":
            return _proxy(args, config)
        if args.command == "check" and not config.kubernetes.manifests:
            # Nothing to load: check the config and the files it names, contact no cluster.
            app.check(config)
            print(_config_line(config))
            print("manifests: none given (check contacts no cluster; give --manifests PATH)")
            return 0
        built = app.build(config)
    except (ConfigError, app.StartupError) as e:
        return _refuse(e)
    if args.command == "check":
        print(_summary(built))
        return 0
    try:
        # A reload reads the file and applies the environment and the flags again.
        return trio.run(functools.partial(app.serve, built, loader=lambda: config_of(args)))
    except OSError as e:
        print(f"kdns: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0  # SIGINT before the signal handlers were installed: nothing was serving yet


def _print_corefile(path: str) -> None:
    """`kdns check --corefile`: the kdns config the Corefile gives, as YAML, with a comment per
    directive kdns accepts without following it; refused ones are raised by `config_of` after."""
    from kdns.corefile.load import read_corefile, render_yaml

    print(render_yaml(read_corefile(path, os.environ), path), end="")


def _config_line(config: Config) -> str:
    dns = config.dns
    return f"config: ok (zones {', '.join(dns.zones)}; ttl {dns.ttl}; pods {dns.pods})"


def _summary(built: app.App) -> str:
    store, config, resolver = built.store, built.config, built.resolver
    types: Counter[str] = Counter()
    forward = reverse = 0
    for key in store.services:
        records = resolver.service_records(key)
        assert records is not None
        forward += len(records.forward)
        reverse += len(records.reverse)
        for table in (records.forward, records.reverse):
            for rrs in table.values():
                types.update(QTYPE.get(r.rtype) for r in rrs)
    counts = ", ".join(f"{t} {n}" for t, n in sorted(types.items())) or "nothing"
    lines = [
        _config_line(config),
        f"manifests: ok ({len(store.namespaces)} namespaces, {len(store.services)} services, "
        f"{len(store.slices)} endpoint slices, {len(store.pods)} pods)",
    ]
    ignored = built.source.ignored if isinstance(built.source, ManifestSource) else {}
    if ignored:
        # Kinds kdns does not serve (Deployment, ConfigMap, …): read, checked, not served.
        lines.append("ignored: " + ", ".join(f"{n} {kind}" for kind, n in ignored.items()))
    lines += [
        f"records per zone: {counts}",
        f"names per zone: {forward} forward, {reverse} reverse",
    ]
    return "\n".join(lines)


# --- kdns explain NAME [TYPE] -------------------------------------------------------------------


def _explain_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    explain = commands.add_parser(
        "explain",
        help="print the answer kdns would give for a name, and why",
        description="Print the answer kdns would give for NAME (records as dig shows them), where "
        "each record comes from (Service, EndpointSlice, Pod), or why the name is NXDOMAIN or "
        "NODATA. Exit status 0 when answered (any rcode), 2 on bad input or a bad source.",
    )
    explain.add_argument("name", metavar="NAME", help="a domain name, or an IP address (its PTR)")
    explain.add_argument("type", metavar="TYPE", nargs="?", help="query type (A; PTR for an IP)")
    common(explain)
    _key_flag(
        explain,
        "--upstreams",
        "forward.upstreams",
        metavar="IP[:PORT]",
        nargs="*",
        help="where names outside the zones would go (default: /etc/resolv.conf)",
    )
    explain.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a live cluster to sync (30)",
    )


def _question(name: str, rtype: str | None) -> tuple[str, int]:
    """NAME and TYPE as given → (lower-case name without the trailing dot, type number)."""
    from kdns.dns import explain as explain_mod

    reverse = explain_mod.reverse_name_of(name)
    qname = reverse if reverse is not None else name.rstrip(".").lower()
    labels = qname.split(".")
    if (
        not qname
        or not qname.isascii()
        or any(not label or len(label) > 63 or not label.isprintable() for label in labels)
        or len(qname) > 253
    ):
        raise ValueError(f"{name!r} is not a domain name")
    text = (rtype or ("PTR" if reverse is not None else "A")).upper()
    qtype = QTYPE.reverse.get(text)
    if qtype is None and text.startswith("TYPE") and text[4:].isdigit():
        qtype = int(text[4:])
    if qtype is None or not 0 < qtype < 65536:
        raise ValueError(f"{rtype!r} is not a DNS type (A, AAAA, SRV, PTR, CNAME, TXT, ...)")
    return qname, qtype


def _explain(args: argparse.Namespace) -> int:
    try:
        qname, qtype = _question(args.name, args.type)
    except ValueError as e:
        print(f"kdns: {e}", file=sys.stderr)
        return 2
    try:
        config = config_of(args)
        built = app.build(config)
    except (ConfigError, app.StartupError) as e:
        return _refuse(e)
    if not built.store.synced and not trio.run(_wait_synced, built, args.timeout):
        kinds = ", ".join(built.store.unsynced_kinds())
        print(
            f"kdns: the cluster did not sync within {args.timeout:g} s (still waiting for: "
            f"{kinds})",
            file=sys.stderr,
        )
        return 2
    forwarder = built.forwarder

    def upstreams_for(name: str) -> tuple[str, ...]:
        return tuple(str(u) for u in forwarder.upstreams_for(name)) if forwarder else ()

    from kdns.dns import explain as explain_mod

    explained = explain_mod.explain_asked(
        built.handler.plugins, built.resolver, qname, qtype, upstreams_for
    )
    print(explain_mod.render(explained))
    return 0


async def _wait_synced(built: app.App, timeout: float) -> bool:
    """Run the source until the store has every watched kind, or `timeout` passes."""
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            await nursery.start(built.source.run)
            await wait_synced(built.store)
            nursery.cancel_scope.cancel()
    return built.store.synced


def run() -> None:
    """The console script: `main`, then an exit that does not wait for worker threads.

    Reflector threads blocked in a socket read are abandoned when kdns stops (they cannot be
    interrupted); letting the interpreter shut down under them can abort the process. Nothing
    is left to do once `main` returned, so flush and leave."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
