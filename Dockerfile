# kdns: a slim multi-stage image. The builder installs kdns and every dependency into a virtual
# environment at /opt/kdns; the runtime stages copy only that environment (no compiler, no pip,
# no pip cache).
#
#   docker build -t kdns:0.1.0 .                              # the DNS server (the default)
#   docker build --target proxy -t kdns-proxy:0.1.0 .         # the service proxy
#
# These are the images config/kubernetes/ names (tests/test_deploy.py keeps them in step).
#
# BASE is any Debian 12 image with python3 (3.11) and its venv module: the official slim Python
# image by default, or a local one (`--build-arg BASE=localhost/debian-python:12`, which is how
# tests/e2e/test_image.py builds both targets from a debootstrap tree when no registry is
# reachable). The virtual environment is what makes both work: Debian's own python3 refuses a
# system-wide `pip install` (PEP 668, "externally managed"), and a venv is outside that rule.
# Both stages must use the same BASE: the venv's python is a link to the base's python3.
#
# The DNS image runs as the numeric non-root user 65532 (so the kubelet can check runAsNonRoot)
# and listens on 1053: a non-root process cannot bind 53 without NET_BIND_SERVICE, and a Service
# maps port 53 to 1053 instead (config/kubernetes/kdns-service.yaml). Its config file goes at
# /etc/kdns/kdns.yaml (a ConfigMap mounted at /etc/kdns); without one it serves the example
# cluster, so `docker run -p 5353:1053/udp kdns:0.1.0` answers something at once.

ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/kdns
COPY pyproject.toml README.md LICENSE ./
COPY kdns ./kdns
# A regular (not editable) install, then pip and setuptools leave: the runtime needs neither.
RUN /opt/kdns/bin/pip install . \
    && /opt/kdns/bin/pip uninstall --yes pip setuptools

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/kdns/bin:$PATH
COPY --from=build /opt/kdns /opt/kdns
RUN groupadd --system --gid 65532 kdns \
    && useradd --system --uid 65532 --gid kdns --no-create-home --shell /usr/sbin/nologin kdns
LABEL org.opencontainers.image.title="kdns" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["kdns"]

# The service proxy: the same kdns plus the tools it drives (ip, iptables-restore, nft, conntrack,
# ipvsadm, ipset; kdns/proxy/dataplane.py and conntrack.py). It runs as root in the host's
# network namespace with NET_ADMIN (config/kubernetes/kdns-proxy.yaml). Debian 12's iptables is
# the nft-based one; nodes still on iptables-legacy need the legacy binaries selected
# (update-alternatives --set iptables /usr/sbin/iptables-legacy) so both sides share one table.
FROM base AS proxy
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iproute2 iptables nftables conntrack ipvsadm ipset \
    && rm -rf /var/lib/apt/lists/*
USER 0:0
EXPOSE 10256/tcp
CMD ["proxy", "--help"]

# The DNS server: the default target, last so a plain `docker build` makes it.
FROM base AS kdns
# The example cluster, outside /etc/kdns so a mounted config does not hide it.
COPY config/examples /usr/share/kdns/examples
USER 65532:65532
EXPOSE 1053/udp 1053/tcp 8080/tcp 8181/tcp 9153/tcp
CMD ["serve", "--dns-addr", "0.0.0.0:1053", "--manifests", "/usr/share/kdns/examples"]
