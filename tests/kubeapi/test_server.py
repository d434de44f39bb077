"""The fake kube-apiserver speaks the real protocol: proven with the unchanged ``kubernetes`` client.

Every test talks HTTPS to a real ``ApiServer`` through a client built from the kubeconfig the
server wrote (``config.new_client_from_config``), or through urllib3 when the wire format itself
is the point. Watches always carry a timeout so that a regression fails fast instead of hanging.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from tests.kubeapi import objects as o
from tests.kubeapi import server as server_module
from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import ApiServer

__all__ = ["kube_api", "kubeconfig"]  # fixtures, re-exported for pytest


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    c = config.new_client_from_config(config_file=str(kubeconfig))
    yield c
    c.close()


@pytest.fixture
def v1(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def raw_watch(v1: client.CoreV1Api, rv: str | int, **kw: Any) -> urllib3.HTTPResponse:
    """A watch of all Services as an informer opens it: raw urllib3 response, no preloading."""
    kw.setdefault("timeout_seconds", 5)
    kw.setdefault("_request_timeout", (3, 10))
    return v1.list_service_for_all_namespaces(
        watch=True, resource_version=str(rv), _preload_content=False, **kw
    )


def events(resp: urllib3.HTTPResponse) -> Iterator[dict[str, Any]]:
    for line in iter_resp_lines(resp):
        yield json.loads(line)


def take(resp: urllib3.HTTPResponse, n: int) -> list[dict[str, Any]]:
    """The first ``n`` events of a raw watch, then close it (no waiting for its timeout)."""
    return [json.loads(line) for line in take_lines(resp, n)]


def take_lines(resp: urllib3.HTTPResponse, n: int) -> list[str]:
    out = []
    for line in iter_resp_lines(resp):
        out.append(line)
        if len(out) == n:
            break
    resp.close()
    return out


def list_rv(v1: client.CoreV1Api) -> str:
    return v1.list_service_for_all_namespaces().metadata.resource_version


def status_of(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


# --------------------------------------------------------------------------- lists


def test_list_typed_and_raw(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.load(
        "services",
        [
            o.service(
                "kube-system", "kube-dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]
            ),
            o.service("default", "web"),
        ],
    )
    typed = v1.list_service_for_all_namespaces()
    assert [(s.metadata.namespace, s.metadata.name) for s in typed.items] == [
        ("default", "web"),
        ("kube-system", "kube-dns"),
    ]
    assert typed.metadata.resource_version == str(kube_api.resource_version)
    assert typed.items[1].spec.ports[0].protocol == "UDP"

    resp = v1.list_service_for_all_namespaces(_preload_content=False)
    body = json.loads(resp.data)
    assert (body["kind"], body["apiVersion"]) == ("ServiceList", "v1")
    assert body["metadata"] == {"resourceVersion": str(kube_api.resource_version)}
    meta = body["items"][0]["metadata"]
    assert {"uid", "resourceVersion", "creationTimestamp"} <= meta.keys()
    assert int(meta["resourceVersion"]) <= kube_api.resource_version
    assert body["items"][0]["kind"] == "Service"

    ns_only = v1.list_namespaced_service("kube-system")
    assert [s.metadata.name for s in ns_only.items] == ["kube-dns"]


def test_every_resource_deserializes_into_the_client_models(
    kube_api: ApiServer, api: client.ApiClient, v1: client.CoreV1Api
) -> None:
    kube_api.load("namespaces", [o.namespace("apps")])
    kube_api.load(
        "services",
        [
            o.service("apps", "web", ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
            o.service("apps", "db", headless=True, ports=[5432]),
            o.service("apps", "ext", type="ExternalName", external_name="example.org"),
            o.service("apps", "np", type="NodePort", ports=[80, 443]),
            o.service("apps", "lb", type="LoadBalancer"),
            o.service("apps", "dual", cluster_ips=["10.96.1.1", "fd00::1"]),
        ],
    )
    kube_api.load(
        "endpointslices",
        [o.endpointslice("apps", "db", addresses=["10.244.0.5", "10.244.0.6"], hostname="db")],
    )
    kube_api.load("endpoints", [o.endpoints("apps", "db", addresses=["10.244.0.5"], ready=False)])
    kube_api.load("pods", [o.pod("apps", "db-0", hostname="db-0", subdomain="db")])

    assert {s.metadata.name for s in v1.list_namespace().items} == {"default", "apps"}
    assert len(v1.list_service_for_all_namespaces().items) == 6
    assert v1.read_namespaced_service("db", "apps").spec.cluster_ip == "None"
    assert v1.read_namespace("apps").status.phase == "Active"
    slices = client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
    [s] = slices.items
    assert s.metadata.labels["kubernetes.io/service-name"] == "db"
    assert (
        s.metadata.owner_references[0].uid
        == kube_api.get("services", "apps", "db")["metadata"]["uid"]
    )
    assert [e.hostname for e in s.endpoints] == ["db-0", "db-1"]
    eps = v1.list_endpoints_for_all_namespaces().items[0]
    assert eps.subsets[0].not_ready_addresses[0].ip == "10.244.0.5"
    pod = v1.list_pod_for_all_namespaces().items[0]
    assert (pod.spec.hostname, pod.status.pod_ip) == ("db-0", o.pod_ip_for("apps", "db-0"))

    with pytest.raises(ApiException) as e:
        v1.read_namespaced_service("nope", "apps")
    assert e.value.status == 404
    assert status_of(e.value)["reason"] == "NotFound"
    assert status_of(e.value)["details"] == {"name": "nope", "kind": "services"}


def test_paginated_list_is_a_consistent_snapshot(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.load("services", [o.service("default", f"s{i:02}") for i in range(25)])
    first = v1.list_service_for_all_namespaces(limit=10)
    assert first.metadata.remaining_item_count == 15
    assert first.metadata._continue
    # Changes after the first page must not show up in the following pages.
    kube_api.create("services", o.service("default", "s00a"))
    kube_api.delete("services", "default", "s20")
    kube_api.patch("services", "default", "s21", {"metadata": {"labels": {"changed": "yes"}}})
    names = [s.metadata.name for s in first.items]
    token = first.metadata._continue
    pages = 1
    while token:
        page = v1.list_service_for_all_namespaces(limit=10, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [s.metadata.name for s in page.items]
        if page.metadata._continue is None:
            s21 = next(s for s in page.items if s.metadata.name == "s21")
            assert s21.metadata.labels is None or "changed" not in s21.metadata.labels
        token = page.metadata._continue
        pages += 1
    assert pages == 3
    assert names == [f"s{i:02}" for i in range(25)]
    now = [s.metadata.name for s in v1.list_service_for_all_namespaces().items]
    assert "s00a" in now and "s20" not in now

    with pytest.raises(ApiException) as e:
        v1.list_service_for_all_namespaces(
            limit=10, _continue=first.metadata._continue, resource_version="5"
        )
    assert e.value.status == 400


def test_expired_continue_token_is_410_with_an_inconsistent_token(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    kube_api.load("services", [o.service("default", f"s{i}") for i in range(5)])
    first = v1.list_service_for_all_namespaces(limit=2)
    kube_api.create("services", o.service("default", "s9"))
    kube_api.compact()
    with pytest.raises(ApiException) as e:
        v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410
    status = status_of(e.value)
    assert status["reason"] == "Expired" and status["code"] == 410
    rest = v1.list_service_for_all_namespaces(_continue=status["metadata"]["continue"])
    assert [s.metadata.name for s in rest.items] == ["s2", "s3", "s4", "s9"]


def test_expire_next_continue_is_the_410_of_an_expired_token_for_that_many_pages(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    kube_api.load("services", [o.service("default", f"s{i}") for i in range(5)])
    kube_api.faults.expire_next_continue(1, resource="services")
    first = v1.list_service_for_all_namespaces(limit=2)  # a first page has no token: served
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    with pytest.raises(ApiException) as e:
        v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410
    assert status_of(e.value)["reason"] == "Expired"
    # Only once: the same token serves the next page now.
    page = v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert [s.metadata.name for s in page.items] == ["s2", "s3"]


def test_field_and_label_selectors(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.load(
        "services",
        [
            o.service("a", "x", labels={"tier": "web"}),
            o.service("b", "x", labels={"tier": "db"}),
            o.service("b", "y"),
        ],
    )

    def names(**kw: Any) -> list[str]:
        items = v1.list_service_for_all_namespaces(**kw).items
        return [f"{s.metadata.namespace}/{s.metadata.name}" for s in items]

    assert names(field_selector="metadata.name=x") == ["a/x", "b/x"]
    assert names(field_selector="metadata.namespace!=a") == ["b/x", "b/y"]
    assert names(label_selector="tier=web") == ["a/x"]
    assert names(label_selector="tier in (web,db),tier!=web") == ["b/x"]
    assert names(label_selector="!tier") == ["b/y"]
    with pytest.raises(ApiException) as e:
        v1.list_service_for_all_namespaces(field_selector="spec.clusterIP=None")
    assert e.value.status == 400


# --------------------------------------------------------------------------- watches


def test_watch_replays_from_the_list_rv_then_streams(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    kube_api.create("services", o.service("default", "a"))
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "b"))  # after the list: replayed

    def mutate() -> None:
        assert kube_api.stats.wait_until(lambda s: s.open_watches("services") == 1)
        kube_api.patch("services", "default", "a", {"metadata": {"labels": {"v": "2"}}})
        kube_api.delete("services", "default", "b")

    t = threading.Thread(target=mutate)
    t.start()
    w = watch.Watch()
    got = []
    for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=5):
        got.append(ev)
        if len(got) == 3:
            w.stop()
    t.join()
    assert [(e["type"], e["object"].metadata.name) for e in got] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    assert isinstance(got[0]["object"], client.V1Service)
    rvs = [int(e["object"].metadata.resource_version) for e in got]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert rvs[-1] == kube_api.resource_version  # DELETED carries the deletion's own RV
    assert got[1]["object"].metadata.labels == {"v": "2"}


def test_watch_chunks_are_one_event_each(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    rv = list_rv(v1)
    for name in ("a", "b", "c"):
        kube_api.create("services", o.service("default", name))
    resp = raw_watch(v1, rv)
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.headers["Content-Type"] == "application/json"
    chunks = []
    for chunk in resp.read_chunked():
        chunks.append(chunk)
        if len(chunks) == 3:
            break
    resp.close()
    for chunk in chunks:
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1
        assert json.loads(chunk)["type"] == "ADDED"


def test_watch_from_rv_zero_starts_with_the_current_state(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    kube_api.load("services", [o.service("default", n) for n in ("a", "b")])
    kube_api.delete("services", "default", "a")
    kube_api.create("services", o.service("default", "c"))
    got = [(e["type"], e["object"]["metadata"]["name"]) for e in take(raw_watch(v1, "0"), 2)]
    assert got == [("ADDED", "b"), ("ADDED", "c")]


def test_send_initial_events_ends_with_an_annotated_bookmark(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    kube_api.load("services", [o.service("default", n) for n in ("a", "b")])
    resp = raw_watch(
        v1,
        "",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
    )
    got = take(resp, 3)
    assert [e["type"] for e in got[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert got[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    with pytest.raises(ApiException) as e:
        raw_watch(v1, "", send_initial_events=True)
    assert e.value.status == 422


def test_bookmarks_and_timeout_end_the_stream_cleanly(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    t0 = time.monotonic()
    got = list(
        watch.Watch().stream(
            v1.list_service_for_all_namespaces,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
    )
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 2.5
    assert got[0]["type"] == "ADDED"
    bookmarks = [e for e in got if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 3  # every 0.2 s, and one as the timeout ends the watch
    assert bookmarks[-1]["raw_object"] == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(kube_api.resource_version)},
    }
    no_bookmarks = list(events(raw_watch(v1, kube_api.resource_version, timeout_seconds=1)))
    assert no_bookmarks == []
    # The clean end (terminating chunk) leaves the keep-alive connection reusable.
    assert kube_api.stats.connections_accepted == 1


def test_namespaced_watch_with_label_selector_transitions(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a", labels={"tier": "web"}))
    kube_api.create("services", o.service("other", "a", labels={"tier": "web"}))
    kube_api.patch("services", "default", "a", {"metadata": {"labels": {"tier": "db"}}})
    kube_api.patch("services", "default", "a", {"metadata": {"labels": {"tier": "web"}}})
    resp = v1.list_namespaced_service(
        "default",
        watch=True,
        resource_version=rv,
        label_selector="tier=web",
        timeout_seconds=5,
        _preload_content=False,
    )
    got = [(e["type"], e["object"]["metadata"]["labels"]["tier"]) for e in take(resp, 3)]
    assert got == [("ADDED", "web"), ("DELETED", "web"), ("ADDED", "web")]


def test_compacted_rv_is_410_at_the_start(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    old = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    kube_api.compact()
    with pytest.raises(ApiException) as e:
        raw_watch(v1, old)
    assert e.value.status == 410
    assert status_of(e.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {old} ({kube_api.resource_version})",
        "reason": "Expired",
        "code": 410,
    }
    with pytest.raises(ApiException) as e:
        list(
            watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=old, timeout_seconds=1
            )
        )
    assert e.value.status == 410
    raw_watch(v1, kube_api.resource_version).close()  # the current RV is fine


def test_history_limit_compacts_automatically(tmp_path: Path) -> None:
    with ApiServer(history_limit=5) as s:
        v1 = client.CoreV1Api(
            config.new_client_from_config(str(s.write_kubeconfig(tmp_path / "kc")))
        )
        start = s.resource_version
        s.load("services", [o.service("default", f"s{i}") for i in range(10)])
        with pytest.raises(ApiException) as e:
            raw_watch(v1, start)
        assert e.value.status == 410
        recent = s.resource_version - 5
        assert len(take(raw_watch(v1, recent), 5)) == 5


def test_expired_watch_as_error_event(
    kube_api: ApiServer, v1: client.CoreV1Api, tmp_path: Path
) -> None:
    kube_api.faults.expire_next_watch()
    rv = list_rv(v1)
    [ev] = list(events(raw_watch(v1, rv)))
    assert ev["type"] == "ERROR"
    assert ev["object"]["kind"] == "Status"
    assert (ev["object"]["code"], ev["object"]["reason"]) == (410, "Expired")
    assert ev["object"]["message"].startswith("too old resource version: ")
    kube_api.faults.expire_next_watch()
    with pytest.raises(ApiException) as e:
        list(
            watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=5
            )
        )
    assert e.value.status == 410

    with ApiServer(expired_as_event=True) as s:
        v1b = client.CoreV1Api(
            config.new_client_from_config(str(s.write_kubeconfig(tmp_path / "kc")))
        )
        old = list_rv(v1b)
        s.create("services", o.service("default", "a"))
        s.compact()
        [ev] = list(events(raw_watch(v1b, old)))
        assert (ev["type"], ev["object"]["code"]) == ("ERROR", 410)


def test_rv_in_the_future_is_504(
    kube_api: ApiServer, v1: client.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "TOO_LARGE_WAIT", 0.2)
    with pytest.raises(ApiException) as e:
        raw_watch(v1, kube_api.resource_version + 100)
    assert e.value.status == 504
    assert status_of(e.value)["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


def test_open_watches_are_counted_and_client_closes_are_noticed(
    kube_api: ApiServer, v1: client.CoreV1Api
) -> None:
    rv = list_rv(v1)
    resps = [raw_watch(v1, rv, timeout_seconds=30) for _ in range(3)]
    assert kube_api.stats.wait_until(lambda s: s.open_watches() == 3)
    assert kube_api.stats.count(kind="watch", resource="services") == 3
    for r in resps:
        r.close()
    assert kube_api.stats.wait_until(lambda s: s.open_watches() == 0, timeout=3)
    assert kube_api.stats.max_open_watches == 3


# --------------------------------------------------------------------------- auth, TLS, discovery


def test_requests_without_the_token_get_401(kube_api: ApiServer, tmp_path: Path) -> None:
    cfg = kube_api.kubeconfig()
    cfg["users"][0]["user"]["token"] = "wrong"
    bad = client.CoreV1Api(config.new_client_from_config_dict(cfg))
    with pytest.raises(ApiException) as e:
        bad.list_namespace()
    assert e.value.status == 401
    assert status_of(e.value)["reason"] == "Unauthorized"
    http = urllib3.PoolManager(ca_cert_data=kube_api.ca_pem.decode())
    assert http.request("GET", f"{kube_api.url}/api/v1/services").status == 401


def test_tls_is_verified(kube_api: ApiServer) -> None:
    cfg = kube_api.kubeconfig()
    del cfg["clusters"][0]["cluster"]["certificate-authority-data"]
    untrusting = client.CoreV1Api(config.new_client_from_config_dict(cfg))
    untrusting.api_client.configuration.retries = 0
    with pytest.raises((urllib3.exceptions.HTTPError, ApiException)) as e:
        untrusting.list_namespace()
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_discovery(kube_api: ApiServer, api: client.ApiClient) -> None:
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    core = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"namespaces", "services", "endpoints", "pods"} <= core
    groups = client.ApisApi(api).get_api_versions().groups
    assert [g.preferred_version.group_version for g in groups] == ["discovery.k8s.io/v1"]
    disc = client.DiscoveryV1Api(api).get_api_resources()
    assert [r.name for r in disc.resources] == ["endpointslices"]
    assert client.VersionApi(api).get_code().git_version == "v1.31.0"


def test_without_discovery_v1_clients_fall_back_to_endpoints(tmp_path: Path) -> None:
    with ApiServer(discovery_v1=False) as s:
        api = config.new_client_from_config(str(s.write_kubeconfig(tmp_path / "kc")))
        assert client.ApisApi(api).get_api_versions().groups == []
        for call in (
            client.DiscoveryV1Api(api).get_api_resources,
            client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
        ):
            with pytest.raises(ApiException) as e:
                call()
            assert e.value.status == 404
        s.create("endpoints", o.endpoints("default", "web", addresses=["10.0.0.1"]))
        assert len(client.CoreV1Api(api).list_endpoints_for_all_namespaces().items) == 1


# --------------------------------------------------------------------------- faults


def test_refused_connections(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    watch_resp = raw_watch(v1, list_rv(v1), timeout_seconds=30)
    kube_api.faults.refuse_connections(True)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as e:
        v1.list_namespace()
    assert isinstance(e.value.reason, urllib3.exceptions.NewConnectionError)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", kube_api.port), timeout=1).close()
    with pytest.raises(urllib3.exceptions.ProtocolError):  # the open watch was cut too
        list(events(watch_resp))
    kube_api.faults.refuse_connections(False)
    assert len(v1.list_namespace().items) == 1  # same port again


def test_reset_watches_mid_stream(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    it = events(raw_watch(v1, rv, timeout_seconds=30))
    assert next(it)["type"] == "ADDED"
    assert kube_api.faults.reset_watches() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(it)
    assert kube_api.stats.wait_until(lambda s: s.open_watches() == 0)


def test_hung_watch_is_a_read_timeout(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.faults.hang_next_watch()
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    t0 = time.monotonic()
    resp = raw_watch(v1, rv, timeout_seconds=30, _request_timeout=(3, 1))  # headers do arrive
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        next(events(resp))
    assert 0.9 < time.monotonic() - t0 < 3
    resp.close()
    assert kube_api.stats.wait_until(lambda s: s.open_watches() == 0)
    # Only the next watch hangs.
    assert next(events(raw_watch(v1, rv, timeout_seconds=1)))["type"] == "ADDED"


def test_garbage_line_then_normal_events(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.faults.garbage_next_watch(b"not json")
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    lines = take_lines(raw_watch(v1, rv), 2)
    assert lines[0] == "not json"
    assert json.loads(lines[1])["type"] == "ADDED"
    kube_api.faults.garbage_next_watch(b"{")
    w = watch.Watch()
    got = []
    for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=5):
        got.append(ev)
        if len(got) == 2:
            w.stop()
    assert got[0] is None  # the client's own parser yields None for an undecodable line
    assert got[1]["type"] == "ADDED"


def test_huge_line(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.faults.huge_line_next_watch(5 * 1024 * 1024)
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    lines = take_lines(raw_watch(v1, rv), 2)
    assert [json.loads(line)["type"] for line in lines] == ["ADDED", "BOOKMARK"]
    assert len(lines[1]) == 5 * 1024 * 1024
    assert json.loads(lines[1])["object"]["metadata"]["resourceVersion"] == str(
        kube_api.resource_version
    )


def test_error_next(kube_api: ApiServer, v1: client.CoreV1Api, kubeconfig: Path) -> None:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.retries = 0
    no_retry = client.CoreV1Api(client.ApiClient(cfg))
    kube_api.faults.error_next(500)
    with pytest.raises(ApiException) as e:
        v1.list_namespace()
    assert e.value.status == 500
    assert status_of(e.value)["reason"] == "InternalError"
    assert len(v1.list_namespace().items) == 1

    # With its default Retry, urllib3 itself waits out a 429's Retry-After and retries ...
    kube_api.faults.error_next(429, retry_after=0)
    assert len(v1.list_namespace().items) == 1
    assert kube_api.stats.statuses[429] == 1
    # ... so a caller only sees the 429 with retries disabled.
    kube_api.faults.error_next(429, n=2)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            no_retry.list_namespace()
        assert e.value.status == 429
        assert e.value.headers["Retry-After"] == "1"
        assert status_of(e.value)["details"] == {"retryAfterSeconds": 1}
    no_retry.list_namespace()

    kube_api.faults.error_next(503, resource="pods")
    kube_api.faults.error_next(500, resource="services", kind="watch")
    v1.list_namespace()
    v1.list_service_for_all_namespaces()
    with pytest.raises(ApiException) as e:
        raw_watch(v1, "0")
    assert e.value.status == 500
    with pytest.raises(ApiException) as e:
        v1.list_pod_for_all_namespaces()
    assert e.value.status == 503


def test_slow_list(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.faults.slow_list(0.5, resource="services")
    t0 = time.monotonic()
    v1.list_service_for_all_namespaces()
    assert time.monotonic() - t0 >= 0.5
    kube_api.faults.clear()
    # urllib3 retries a GET that timed out reading (3 times by default), then gives up.
    kube_api.faults.slow_list(0.5, resource="namespaces")
    with pytest.raises(urllib3.exceptions.MaxRetryError) as e:
        v1.list_namespace(_request_timeout=(3, 0.2))
    assert isinstance(e.value.reason, urllib3.exceptions.ReadTimeoutError)
    assert kube_api.stats.count(kind="list", resource="namespaces") == 4


def test_watches_closed_immediately(kube_api: ApiServer, v1: client.CoreV1Api) -> None:
    kube_api.faults.close_watches_immediately()
    rv = list_rv(v1)
    kube_api.create("services", o.service("default", "a"))
    t0 = time.monotonic()
    for _ in range(3):
        assert list(events(raw_watch(v1, rv, timeout_seconds=30))) == []
    assert time.monotonic() - t0 < 1
    assert kube_api.stats.count(kind="watch") == 3
    kube_api.faults.clear()
    assert len(take(raw_watch(v1, rv), 1)) == 1


# --------------------------------------------------------------------------- state helpers


def test_no_op_update_does_not_bump_the_rv(kube_api: ApiServer) -> None:
    svc = kube_api.create("services", o.service("default", "a"))
    rv = kube_api.resource_version
    again = kube_api.update("services", o.service("default", "a"))
    assert kube_api.resource_version == rv
    assert again == svc


def test_scale_headless_rewrites_slices_and_endpoints(
    kube_api: ApiServer, api: client.ApiClient
) -> None:
    kube_api.create(
        "services", o.service("default", "db", headless=True, ports=[{"name": "pg", "port": 5432}])
    )
    kube_api.create("endpoints", o.endpoints("default", "db"))
    rv = kube_api.resource_version
    kube_api.scale_headless("default", "db", 3, 1, hostnames=True)
    disc = client.DiscoveryV1Api(api)
    [s] = disc.list_endpoint_slice_for_all_namespaces().items
    assert [e.conditions.ready for e in s.endpoints] == [True, True, True, False]
    assert [e.hostname for e in s.endpoints] == ["db-0", "db-1", "db-2", "db-3"]
    assert (s.ports[0].name, s.ports[0].port) == ("pg", 5432)
    eps = client.CoreV1Api(api).read_namespaced_endpoints("db", "default")
    assert (len(eps.subsets[0].addresses), len(eps.subsets[0].not_ready_addresses)) == (3, 1)
    kube_api.scale_headless("default", "db", 1)
    resp = disc.list_endpoint_slice_for_all_namespaces(
        watch=True, resource_version=str(rv), timeout_seconds=5, _preload_content=False
    )
    got = [(e["type"], len(e["object"]["endpoints"])) for e in take(resp, 2)]
    assert got == [("ADDED", 4), ("MODIFIED", 1)]


def test_50k_services_list_whole(tmp_path: Path) -> None:
    with ApiServer() as s:
        s.load("services", o.many_services(50_000))
        api = config.new_client_from_config(str(s.write_kubeconfig(tmp_path / "kc")))
        v1 = client.CoreV1Api(api)
        resp = v1.list_service_for_all_namespaces(_preload_content=False)
        data = resp.data
        assert data.startswith(b'{"kind":"ServiceList","apiVersion":"v1","metadata":')
        assert data.count(b'{"kind":"Service","apiVersion":"v1",') == 50_000
        assert data.endswith(b"]}\n")


def test_stop_ends_every_thread(tmp_path: Path) -> None:
    s = ApiServer().start()
    v1 = client.CoreV1Api(config.new_client_from_config(str(s.write_kubeconfig(tmp_path / "kc"))))
    raw_watch(v1, "0", timeout_seconds=60)
    s.faults.hang_next_watch()
    raw_watch(v1, "0", timeout_seconds=60)
    assert s.stats.wait_until(lambda st: st.open_watches() == 2)
    v1.list_namespace()  # a third connection, left idle (keep-alive)
    assert len([t for t in threading.enumerate() if t.name.startswith("kubeapi-")]) == 4
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 2
    assert [t.name for t in threading.enumerate() if t.name.startswith("kubeapi-")] == []
    assert s.stats.open_watches() == 0 and s.stats.open_connections == 0
