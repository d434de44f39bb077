"""The one set of builders for test objects, named by what they build.

Three different things share the words "service", "endpoint" and "pod" in the tests; each has
its own prefix here so that a call site says which it means:

- ``model_*`` build the slim, frozen objects of ``kdns.model`` that the store holds and that
  records, routes and rules are computed from (``Service``, ``Endpoint``, ``EndpointSlice``,
  ``Pod``).
- ``api_*`` build Kubernetes API objects as plain dicts holding only the fields kdns reads, as a
  manifest file or ``kubectl get -o yaml`` gives them: input for ``*_from_dict`` and for the
  manifest files the tests write. (Objects exactly as kube-apiserver returns them, with uid,
  ownerReferences and defaulting, for the fake API server, are ``tests.kubeapi.objects``.)
- ``manifest_text`` writes API dicts as the multi-document YAML a manifest file holds.
- ``*_fqdn`` build the DNS names of the Kubernetes DNS schema that clients ask for.

Contract: every builder returns a fresh object; the same arguments give equal objects; defaults
are stated in each signature and are the only values a test may rely on without passing them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from kdns.model import Endpoint, EndpointPort, EndpointSlice, Pod, Service, ServicePort

# (name, protocol, port, nodePort) of a Service port; every model_service port targets TARGET_PORT.
ServicePortSpec = tuple[str, str, int, int | None]
# (name, protocol, port) of an EndpointSlice port.
EndpointPortSpec = tuple[str, str, int]

TARGET_PORT = 8080
ZONE = "cluster.local"

# --- model objects (kdns.model) -----------------------------------------------------------------


def model_service(
    key: str,
    *,
    ports: Iterable[ServicePortSpec] = (("p80", "TCP", 80, None),),
    ip: str | tuple[str, ...] = "172.30.0.41",
    **fields: Any,
) -> Service:
    """Service "namespace/name" with ClusterIP(s) `ip`; `fields` are further model fields."""
    namespace, _, name = key.partition("/")
    return Service(
        namespace,
        name,
        cluster_ips=(ip,) if isinstance(ip, str) else ip,
        ports=tuple(ServicePort(pn, proto, p, TARGET_PORT, np) for pn, proto, p, np in ports),
        **fields,
    )


def model_endpoint(
    ip: str,
    *,
    node: str = "node2",
    ports: Iterable[EndpointPortSpec] = (("p80", "TCP", TARGET_PORT),),
    **conditions: Any,
) -> Endpoint:
    """An endpoint on `node`; `conditions` are ready/serving/terminating and the other fields."""
    return Endpoint(ip, node_name=node, ports=tuple(EndpointPort(*p) for p in ports), **conditions)


def model_slice(
    name: str,
    service: str,
    *addresses: str,
    namespace: str = "ns",
    trigger: float | None = None,
    family: str = "IPv4",
) -> EndpointSlice:
    """EndpointSlice `name` of Service `service`, one ready ``model_endpoint`` per address."""
    endpoints = tuple(model_endpoint(a) for a in addresses)
    return EndpointSlice(namespace, name, service, family, endpoints, trigger)


def model_pod(
    name: str,
    *ips: str,
    namespace: str = "ns",
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: bool = True,
    **fields: Any,
) -> Pod:
    """A Running, Ready Pod with `ips` (primary first), labelled app=web unless `labels` says."""
    return Pod(
        namespace,
        name,
        labels=tuple(sorted((labels if labels is not None else {"app": "web"}).items())),
        ips=ips,
        phase=phase,
        ready=ready,
        **fields,
    )


# --- API objects as dicts (the fields kdns reads) -----------------------------------------------


def api_service(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """A Service whose spec is exactly `spec` (camelCase API field names)."""
    return {"kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def api_endpointslice(
    namespace: str,
    service: str,
    name: str,
    endpoints: list[Any],
    ports: list[Any],
    family: str = "IPv4",
) -> dict[str, Any]:
    """EndpointSlice `name`, labelled as Service `service`'s, with these endpoints and ports."""
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    }


def api_endpoint(ip: str, ready: bool = True, hostname: str = "") -> dict[str, Any]:
    """One entry of an EndpointSlice's `endpoints`."""
    out: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
    if hostname:
        out["hostname"] = hostname
    return out


def api_pod(
    name: str,
    ip: str | None,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    hostname: str = "",
    subdomain: str = "",
    port: int = 6379,
) -> dict[str, Any]:
    """A Pod on node-1, labelled app=redis unless `labels` says, with container port "redis"."""
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "ports": [{"name": "redis", "containerPort": port}]}],
        "nodeName": "node-1",
    }
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "redis"} if labels is None else labels,
        },
        "spec": spec,
        "status": status,
    }


def manifest_text(*objects: dict[str, Any]) -> str:
    """`objects` as one YAML document each, keys in the order given (as ``kubectl -o yaml``)."""
    return yaml.safe_dump_all(objects, sort_keys=False)


# --- DNS names (the Kubernetes DNS schema) ------------------------------------------------------


def service_fqdn(name: str, namespace: str = "default", zone: str = ZONE) -> str:
    """``<service>.<ns>.svc.<zone>``; `name` may carry labels in front (``_port._proto.web``)."""
    return f"{name}.{namespace}.svc.{zone}"


def pod_fqdn(ip: str, namespace: str = "default", zone: str = ZONE) -> str:
    """``a-b-c-d.<ns>.pod.<zone>``: the pod A record name, the IP's dots (or colons) as dashes."""
    return f"{ip.replace('.', '-').replace(':', '-')}.{namespace}.pod.{zone}"
