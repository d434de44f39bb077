"""The command line: `kdns serve` and `kdns check`; exit 2 with one clear line per problem.

Contract:
- `main(argv)` returns the exit status: 0 on success, 2 for a bad config, bad manifests or a
  missing source (each problem one line on stderr, naming the file, line and field).
- Flags override the config file; the config file overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence

import trio
from dnslib import QTYPE

from kdns import app, logs
from kdns.config import POD_MODES, Config, ConfigError, env_overrides, load_config

log = logging.getLogger("kdns")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdns", description="An in-cluster DNS server for Kubernetes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", metavar="FILE", help="YAML config file (every key has a default)"
        )
        p.add_argument(
            "--manifests",
            metavar="PATH",
            action="append",
            help="a Kubernetes manifest file or folder (repeatable); re-read when it changes",
        )
        p.add_argument(
            "--kubeconfig",
            metavar="FILE",
            help="follow a live cluster (default: $KUBECONFIG, else in-cluster when in a pod)",
        )
        p.add_argument("--context", metavar="NAME", help="the kubeconfig context to use")
        p.add_argument("--zones", metavar="ZONE", nargs="+", help="authoritative zones")
        p.add_argument("--ttl", type=int, metavar="SECONDS", help="TTL of cluster records (5)")
        p.add_argument("--pods", choices=POD_MODES, help="pod records mode (insecure)")
        p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        p.add_argument("--log-format", choices=logs.LOG_FORMATS, help="log lines as text or JSON")

    serve = commands.add_parser("serve", help="answer DNS for the cluster")
    common(serve)
    serve.add_argument("--dns-addr", metavar="HOST:PORT", help="DNS listen address (0.0.0.0:53)")
    serve.add_argument("--health-addr", metavar="HOST:PORT", help="/health (0.0.0.0:8080)")
    serve.add_argument("--ready-addr", metavar="HOST:PORT", help="/ready (0.0.0.0:8181)")
    serve.add_argument("--metrics-addr", metavar="HOST:PORT", help="/metrics (0.0.0.0:9153)")
    serve.add_argument(
        "--upstreams",
        metavar="IP[:PORT]",
        nargs="*",
        help="where to forward other names (default: /etc/resolv.conf; none: no forwarding)",
    )
    serve.add_argument(
        "--kube-dns-configmap",
        metavar="FILE",
        help="a kube-dns ConfigMap whose stubDomains and upstreamNameservers to use",
    )
    serve.add_argument(
        "--query-log",
        nargs="?",
        const="text",
        choices=("text", "json", "false"),
        help="log every query as CoreDNS's log plugin does (text, the default) or as JSON",
    )
    serve.add_argument(
        "--metrics-coredns-names",
        action="store_true",
        default=None,
        help="also export every metric under its CoreDNS name (coredns_dns_requests_total, …)",
    )
    serve.add_argument(
        "--autopath",
        action="store_true",
        default=None,
        help="answer a pod's search path server-side (CoreDNS autopath @kubernetes)",
    )
    check = commands.add_parser(
        "check", help="validate a config and manifests and print what would be served"
    )
    common(check)
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
    # The environment overrides the file, flags override both.
    config = config.with_overrides(**env_overrides(dict(os.environ)))
    upstreams = getattr(args, "upstreams", None)
    return config.with_overrides(
        upstreams=tuple(upstreams) if upstreams is not None else None,
        kube_dns_configmap=getattr(args, "kube_dns_configmap", None),
        autopath=getattr(args, "autopath", None),
        zones=tuple(args.zones) if args.zones else None,
        ttl=args.ttl,
        pods=args.pods,
        dns_addr=getattr(args, "dns_addr", None),
        health_addr=getattr(args, "health_addr", None),
        ready_addr=getattr(args, "ready_addr", None),
        metrics_addr=getattr(args, "metrics_addr", None),
        manifests=tuple(args.manifests) if args.manifests else None,
        kubeconfig=args.kubeconfig,
        context=args.context,
        log_format=args.log_format,
        query_log=getattr(args, "query_log", None),
        metrics_coredns_names=getattr(args, "metrics_coredns_names", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _config(args)
        logs.setup(config.log_format, args.log_level, config.log_consolidate)
        built = app.build(config)
    except ConfigError as e:
        print(f"kdns: {e}", file=sys.stderr)
        return 2
    except app.StartupError as e:
        for line in e.lines:
            print(f"kdns: {line}", file=sys.stderr)
        return 2
    if args.command == "check":
        if not config.manifests:
            print("kdns: check needs --manifests PATH", file=sys.stderr)
            return 2
        print(_summary(built))
        return 0
    try:
        trio.run(app.serve, built)
    except OSError as e:
        print(f"kdns: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


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
    return "\n".join(
        [
            f"config: ok (zones {', '.join(config.zones)}; ttl {config.ttl}; pods {config.pods})",
            f"manifests: ok ({len(store.namespaces)} namespaces, {len(store.services)} services, "
            f"{len(store.slices)} endpoint slices, {len(store.pods)} pods)",
            f"records per zone: {counts}",
            f"names per zone: {forward} forward, {reverse} reverse",
        ]
    )


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
