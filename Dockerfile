# kdns: a slim multi-stage image. The builder makes a wheel of kdns and of every dependency;
# the runtime stage installs only those wheels (no compiler, no pip cache) and runs as non-root.
# Inside the image kdns listens on 1053, so a Service can map port 53 to it without the
# NET_BIND_SERVICE capability (config/kubernetes maps 53 -> 1053).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md LICENSE ./
COPY kdns ./kdns
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels kdns \
    && rm -rf /wheels \
    && groupadd --system --gid 65532 kdns \
    && useradd --system --uid 65532 --gid kdns --no-create-home --shell /usr/sbin/nologin kdns
# The example cluster, so `docker run IMAGE` answers something with no further setup;
# a real deployment mounts its own manifests, or drops --manifests to follow the cluster API.
COPY config/examples /etc/kdns/manifests
USER 65532:65532
EXPOSE 1053/udp 1053/tcp 8080/tcp 8181/tcp 9153/tcp
ENTRYPOINT ["kdns"]
CMD ["serve", "--dns-addr", "0.0.0.0:1053", "--manifests", "/etc/kdns/manifests"]
