"""Real stub resolvers, run in a pod's network namespace: what each one makes of kdns's answers.

Each client turns a lookup into a `Result`: the addresses (or SRV records, or PTR names) it
reports, or a definite "not found", or some other failure (a timeout, "server misbehaving") with
the client's own words. The clients are the libraries pods actually use:

- glibc: `getent ahosts` / `getent hosts ADDRESS` (nsswitch `files dns`).
- musl: a small getaddrinfo / getnameinfo program built static with `musl-gcc` (Debian's
  musl-tools ships musl 1.2.3, which — as Alpine up to 3.17 — never retries over TCP).
- Go's pure resolver (`GODEBUG=netdns=go`, `CGO_ENABLED=0`), a program built without modules.
- Node: `dns.lookup` (getaddrinfo in libuv's thread pool) and `dns.Resolver` (c-ares).
- ldns `drill`, which keeps what it got.

The programs are built once per session into a temporary folder (`ClientPrograms`).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.conftest import need_tool

BUILD_TIMEOUT = 300.0  # seconds: a cold Go build on a loaded machine
RUN_TIMEOUT = 30.0  # seconds per lookup: far above any definite answer's time

MUSL_SOURCE = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* lookup NAME [4|6]: getaddrinfo's addresses, one a line; lookup -x ADDRESS: getnameinfo.
   Exit 2 for "no such name", 3 for any other failure, with gai_strerror on stderr. */
int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "-x") == 0) {
        struct sockaddr_storage ss = {0};
        socklen_t len;
        struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, argv[2], &v4->sin_addr) == 1) {
            v4->sin_family = AF_INET;
            len = sizeof *v4;
        } else if (inet_pton(AF_INET6, argv[2], &v6->sin6_addr) == 1) {
            v6->sin6_family = AF_INET6;
            len = sizeof *v6;
        } else {
            return 3;
        }
        char host[NI_MAXHOST];
        int rc = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, 0, 0, NI_NAMEREQD);
        if (rc) {
            fprintf(stderr, "%s\n", gai_strerror(rc));
            return rc == EAI_NONAME ? 2 : 3;
        }
        puts(host);
        return 0;
    }
    struct addrinfo hints = {0}, *res, *p;
    hints.ai_family = AF_UNSPEC;
    if (argc > 2) hints.ai_family = argv[2][0] == '4' ? AF_INET : AF_INET6;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], 0, &hints, &res);
    if (rc) {
        fprintf(stderr, "%s\n", gai_strerror(rc));
        return rc == EAI_NONAME ? 2 : 3;
    }
    for (p = res; p; p = p->ai_next) {
        char text[INET6_ADDRSTRLEN];
        void *addr = p->ai_family == AF_INET
            ? (void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
            : (void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        inet_ntop(p->ai_family, addr, text, sizeof text);
        puts(text);
    }
    return 0;
}
"""

GO_SOURCE = r"""
package main

// lookup host|srv|ptr NAME: Go's pure resolver (net.Resolver with PreferGo). Exit 2 when the
// name does not exist ("no such host"), 3 for any other error, with the error on stderr.
import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	ctx := context.Background()
	var out []string
	var err error
	switch os.Args[1] {
	case "host":
		out, err = r.LookupHost(ctx, os.Args[2])
	case "srv":
		var srvs []*net.SRV
		_, srvs, err = r.LookupSRV(ctx, "", "", os.Args[2])
		for _, s := range srvs {
			out = append(out, fmt.Sprintf("%d %d %d %s", s.Priority, s.Weight, s.Port, s.Target))
		}
	case "ptr":
		out, err = r.LookupAddr(ctx, os.Args[2])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			os.Exit(2)
		}
		os.Exit(3)
	}
	for _, line := range out {
		fmt.Println(line)
	}
}
"""

# node -e NODE_SOURCE KIND NAME: one JSON object {"ok": [...]} or {"error": code}.
NODE_SOURCE = r"""
const dns = require('dns');
const [kind, name] = process.argv.slice(1);
const done = (ok) => console.log(JSON.stringify({ok}));
const fail = (e) => console.log(JSON.stringify({error: e.code || String(e)}));
const resolver = new dns.promises.Resolver();
const jobs = {
  lookup: () => dns.promises.lookup(name, {all: true}).then(r => r.map(a => a.address)),
  resolve: async () => {
    const found = [];
    let last;
    for (const f of [resolver.resolve4.bind(resolver), resolver.resolve6.bind(resolver)]) {
      try { found.push(...await f(name)); } catch (e) { last = e; }
    }
    if (!found.length) throw last;
    return found;
  },
  srv: () => resolver.resolveSrv(name).then(r => r.map(
    s => `${s.priority} ${s.weight} ${s.port} ${s.name}`)),
  ptr: () => resolver.reverse(name),
};
jobs[kind]().then(done, fail);
"""

NOT_FOUND_CODES = {"ENOTFOUND", "ENODATA"}  # Node: the name, or the type, does not exist


@dataclass
class Result:
    """What a client reported: `found` (addresses, SRV text or PTR names, trailing dots
    stripped), `not_found` for a definite "no such name", else `error` in its own words."""

    found: set[str] = field(default_factory=set)
    not_found: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.found)


class Pod(Protocol):
    def run_in_pod(
        self, *command: str, timeout: float = ..., env: dict[str, str] | None = ...
    ) -> subprocess.CompletedProcess[str]: ...


@dataclass
class ClientPrograms:
    musl: Path
    go: Path
    node: str
    drill: str


def build_programs(folder: Path) -> ClientPrograms:
    """Build the musl and Go programs into `folder` (needs musl-tools, golang-go, nodejs and
    ldnsutils; a missing one skips, or fails in CI, through `need_tool`)."""
    musl_gcc = need_tool("musl-gcc", "musl-tools")
    go = need_tool("go", "golang-go")
    node = need_tool("node", "nodejs")
    drill = need_tool("drill", "ldnsutils")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lookup.c").write_text(MUSL_SOURCE)
    _run([musl_gcc, "-static", "-O2", "-o", str(folder / "musl-lookup"), str(folder / "lookup.c")])
    source = folder / "gosrc" / "lookup.go"
    source.parent.mkdir(exist_ok=True)
    source.write_text(GO_SOURCE)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "GOPATH": str(folder / "gopath"),
        "GOCACHE": str(folder / "gocache"),
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
        "GOFLAGS": "",
    }
    _run([go, "build", "-o", str(folder / "go-lookup"), str(source)], env=env)
    return ClientPrograms(folder / "musl-lookup", folder / "go-lookup", node, drill)


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def _lines(text: str) -> set[str]:
    return {line.strip().rstrip(".") for line in text.splitlines() if line.strip()}


def _by_exit(result: subprocess.CompletedProcess[str]) -> Result:
    """Programs that exit 0 with one item a line, 2 for "no such name", else an error."""
    if result.returncode == 0:
        return Result(found=_lines(result.stdout))
    return Result(
        not_found=result.returncode == 2,
        error=f"exit {result.returncode}: {result.stderr.strip()}",
    )


# --- one function per client and kind of lookup ----------------------------------------------


def glibc(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    if kind == "addr":
        result = pod.run_in_pod("getent", "ahosts", name, timeout=RUN_TIMEOUT)
        if result.returncode == 0:
            return Result(found={line.split()[0] for line in result.stdout.splitlines()})
    elif kind == "ptr":
        result = pod.run_in_pod("getent", "hosts", name, timeout=RUN_TIMEOUT)
        if result.returncode == 0:
            return Result(found={result.stdout.split()[1].rstrip(".")})
    else:
        raise ValueError(kind)
    # getent says 2 for "not found" whatever the reason: glibc's own error code tells a
    # definite NXDOMAIN (EAI_NONAME) from a failure (EAI_AGAIN after a timeout).
    probe = pod.run_in_pod(
        "python3",
        "-c",
        "import socket, sys\n"
        "try:\n    socket.getaddrinfo(sys.argv[1], None)\n"
        "except socket.gaierror as e:\n    print(e.errno)\n",
        name,
        timeout=RUN_TIMEOUT,
    )
    code = probe.stdout.strip()
    return Result(not_found=code == str(-2), error=f"getent exit {result.returncode}, EAI {code}")


def musl(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    args = {"addr": [name], "ptr": ["-x", name]}[kind]
    return _by_exit(pod.run_in_pod(str(programs.musl), *args, timeout=RUN_TIMEOUT))


def go(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    arg = {"addr": "host", "srv": "srv", "ptr": "ptr"}[kind]
    env = {"GODEBUG": "netdns=go"}
    return _by_exit(pod.run_in_pod(str(programs.go), arg, name, timeout=RUN_TIMEOUT, env=env))


def _node(pod: Pod, programs: ClientPrograms, job: str, name: str) -> Result:
    result = pod.run_in_pod(programs.node, "-e", NODE_SOURCE, job, name, timeout=RUN_TIMEOUT)
    if result.returncode != 0:
        return Result(error=f"node exit {result.returncode}: {result.stderr.strip()}")
    reply = json.loads(result.stdout)
    if "ok" in reply:
        return Result(found={str(item).rstrip(".") for item in reply["ok"]})
    return Result(not_found=reply["error"] in NOT_FOUND_CODES, error=reply["error"])


def node_lookup(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    if kind != "addr":
        raise ValueError(kind)
    return _node(pod, programs, "lookup", name)


def node_cares(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    return _node(pod, programs, {"addr": "resolve", "srv": "srv", "ptr": "ptr"}[kind], name)


def drill(pod: Pod, programs: ClientPrograms, kind: str, name: str) -> Result:
    """drill prints the answer it got — a truncated one too — and its rcode."""
    if kind == "ptr":
        runs = [("-x", name, "PTR")]
    elif kind == "srv":
        runs = [(name, "SRV")]
    else:
        runs = [(name, "A"), (name, "AAAA")]
    found: set[str] = set()
    rcodes: list[str] = []
    for args in runs:
        result = pod.run_in_pod(programs.drill, *args[:-1], args[-1], timeout=RUN_TIMEOUT)
        if result.returncode != 0:
            return Result(error=f"drill exit {result.returncode}: {result.stderr.strip()}")
        section = ""
        for line in result.stdout.splitlines():
            if ";; ->>HEADER<<-" in line:
                rcodes.append(line.split("rcode: ")[1].split(",")[0])
            if line.startswith(";; ANSWER SECTION"):
                section = "answer"
            elif line.startswith(";;"):
                section = ""
            elif section == "answer" and line.strip():
                fields = line.split()
                if fields[3] == args[-1]:
                    found.add(" ".join(fields[4:]).rstrip("."))
    if found:
        return Result(found=found)
    return Result(not_found="NXDOMAIN" in rcodes, error=f"drill rcodes {rcodes}")


CLIENTS = {
    "glibc": glibc,
    "musl": musl,
    "go": go,
    "node-lookup": node_lookup,
    "node-cares": node_cares,
    "drill": drill,
}
