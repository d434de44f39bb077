"""Builders for Kubernetes API objects shaped exactly as kube-apiserver returns them (JSON dicts).

Contract:
- Every builder returns a fresh plain ``dict`` (JSON-serialisable, key order as the Go structs
  serialise: kind, apiVersion, metadata, spec/…, status) that can be handed to
  ``ApiServer.create/update/load`` or compared with what a client received.
- ``metadata.resourceVersion`` and ``metadata.creationTimestamp`` are left out: the server sets
  them. ``metadata.uid`` is set, deterministically from (kind, namespace, name) unless ``uid=`` is
  given, so an EndpointSlice's ownerReference points at its Service's uid without bookkeeping.
  (Deleting and re-creating an object from a builder therefore keeps its uid; pass ``uid=`` when
  a test needs a fresh one.)
- Addresses that a test does not care about are derived deterministically from the names
  (``cluster_ip_for``, ``pod_ip_for``): same inputs, same objects, every run.
- ``managedFields`` is omitted (kube-apiserver returns it, clients must ignore it).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "cluster_ip_for",
    "endpoints",
    "endpointslice",
    "many_services",
    "namespace",
    "pod",
    "pod_ip_for",
    "service",
    "uid_for",
]

Port = int | Mapping[str, Any]
Json = dict[str, Any]

_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
_MANAGED_BY = "endpointslice-controller.k8s.io"
_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
_FIXED_TIME = "2024-01-01T00:00:00Z"


def uid_for(kind: str, namespace: str | None, name: str) -> str:
    """The deterministic uid (UUID v4 layout) the builders give object (kind, namespace, name)."""
    h = hashlib.blake2b(f"{kind}/{namespace or ''}/{name}".encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _h(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def cluster_ip_for(namespace: str, name: str) -> str:
    """A deterministic ClusterIP in 10.96.0.0/12 for Service namespace/name."""
    h = _h(namespace, name)
    return f"10.{96 + (h >> 16) % 16}.{(h >> 8) % 256}.{h % 254 + 1}"


def pod_ip_for(namespace: str, name: str) -> str:
    """A deterministic pod IP in 10.244.0.0/16 for Pod namespace/name."""
    h = _h("pod", namespace, name)
    return f"10.244.{(h >> 8) % 256}.{h % 254 + 1}"


def _metadata(
    kind: str,
    namespace: str | None,
    name: str,
    *,
    uid: str | None,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
    extra: Mapping[str, Any] | None = None,
) -> Json:
    meta: Json = {"name": name}
    if extra and "generateName" in extra:
        meta["generateName"] = extra["generateName"]
    if namespace is not None:
        meta["namespace"] = namespace
    meta["uid"] = uid or uid_for(kind, namespace, name)
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if extra:
        meta.update({k: v for k, v in extra.items() if k != "generateName"})
    return meta


def namespace(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    uid: str | None = None,
) -> Json:
    """A core/v1 Namespace, phase Active, with the automatic kubernetes.io/metadata.name label."""
    all_labels = {"kubernetes.io/metadata.name": name, **(labels or {})}
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": _metadata(
            "Namespace", None, name, uid=uid, labels=all_labels, annotations=annotations
        ),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _service_ports(ports: Sequence[Port], *, node_ports: bool) -> list[Json]:
    out: list[Json] = []
    for i, p in enumerate(ports):
        if isinstance(p, int):
            sp: Json = {"protocol": "TCP", "port": p, "targetPort": p}
            if len(ports) > 1:
                sp = {"name": f"port-{p}", **sp}
        else:
            sp = {}
            if "name" in p:
                sp["name"] = p["name"]
            sp["protocol"] = p.get("protocol", "TCP")
            if "appProtocol" in p:
                sp["appProtocol"] = p["appProtocol"]
            sp["port"] = p["port"]
            sp["targetPort"] = p.get("targetPort", p["port"])
            if "nodePort" in p:
                sp["nodePort"] = p["nodePort"]
        if node_ports and "nodePort" not in sp:
            sp["nodePort"] = 30000 + (sp["port"] * 7 + i) % 2768
        out.append(sp)
    return out


def service(
    ns: str,
    name: str,
    *,
    cluster_ip: str | None = None,
    cluster_ips: Sequence[str] | None = None,
    ports: Sequence[Port] = (80,),
    headless: bool = False,
    selector: Mapping[str, str] | None = None,
    type: str = "ClusterIP",
    external_name: str | None = None,
    publish_not_ready_addresses: bool = False,
    session_affinity: str = "None",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    uid: str | None = None,
) -> Json:
    """A core/v1 Service as kube-apiserver returns it after defaulting.

    ``ports`` items are ints (TCP, targetPort = port; named ``port-N`` when there are several) or
    dicts with any of name/protocol/port/targetPort/nodePort/appProtocol. ``headless=True`` gives
    clusterIP "None". ``type="ExternalName"`` needs ``external_name`` and has no clusterIP.
    ``cluster_ips`` (one per family, e.g. IPv4 then IPv6) makes a dual-stack Service.
    ``selector`` defaults to ``{"app": name}``; pass ``{}`` for a selector-less Service.
    """
    meta = _metadata("Service", ns, name, uid=uid, labels=labels, annotations=annotations)
    if type == "ExternalName":
        if not external_name:
            raise ValueError("an ExternalName service needs external_name")
        spec: Json = {"type": "ExternalName", "sessionAffinity": session_affinity}
        spec["externalName"] = external_name
        if ports:
            spec = {"ports": _service_ports(ports, node_ports=False), **spec}
        return {"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {}}
    if headless:
        ips = ["None"]
    elif cluster_ips:
        ips = list(cluster_ips)
    else:
        ips = [cluster_ip or cluster_ip_for(ns, name)]
    families = ["IPv6" if ":" in ip else "IPv4" for ip in ips] if not headless else ["IPv4"]
    spec = {}
    if ports:
        spec["ports"] = _service_ports(ports, node_ports=type in ("NodePort", "LoadBalancer"))
    sel = {"app": name} if selector is None else dict(selector)
    if sel:
        spec["selector"] = sel
    spec["clusterIP"] = ips[0]
    spec["clusterIPs"] = ips
    spec["type"] = type
    spec["sessionAffinity"] = session_affinity
    if publish_not_ready_addresses:
        spec["publishNotReadyAddresses"] = True
    if type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    spec["ipFamilies"] = families
    spec["ipFamilyPolicy"] = "RequireDualStack" if len(ips) > 1 else "SingleStack"
    if type == "LoadBalancer":
        spec["allocateLoadBalancerNodePorts"] = True
    spec["internalTrafficPolicy"] = "Cluster"
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def _endpoint_entries(
    addresses: Sequence[str | Mapping[str, Any]],
    ready: bool | Sequence[bool],
    hostname: str | Sequence[str | None] | None,
) -> list[Json]:
    """Normalise builder arguments to dicts with address/ready/serving/terminating/hostname/…."""
    out: list[Json] = []
    for i, a in enumerate(addresses):
        e: Json = {"address": a} if isinstance(a, str) else dict(a)
        if "ready" not in e:
            e["ready"] = ready if isinstance(ready, bool) else ready[i]
        if "hostname" not in e and hostname is not None:
            if isinstance(hostname, str):
                e["hostname"] = hostname if len(addresses) == 1 else f"{hostname}-{i}"
            else:
                e["hostname"] = hostname[i]
        out.append(e)
    return out


def _target_ref(ns: str, e: Mapping[str, Any], service_name: str, i: int) -> Json | None:
    pod_name = e.get("pod", f"{service_name}-{i}")
    if pod_name is None:
        return None
    return {"kind": "Pod", "namespace": ns, "name": pod_name, "uid": uid_for("Pod", ns, pod_name)}


def endpointslice(
    ns: str,
    service: str,
    name: str | None = None,
    *,
    addresses: Sequence[str | Mapping[str, Any]] = (),
    ready: bool | Sequence[bool] = True,
    ports: Sequence[Port] = (80,),
    hostname: str | Sequence[str | None] | None = None,
    address_type: str | None = None,
    node_name: str | None = "node-1",
    zone: str | None = None,
    labels: Mapping[str, str] | None = None,
    service_uid: str | None = None,
    uid: str | None = None,
) -> Json:
    """A discovery.k8s.io/v1 EndpointSlice owned by Service ``ns/service``, as the controller writes it.

    ``addresses`` items are IP strings or dicts with ``address`` and optionally ready, serving,
    terminating, hostname, node_name, zone, pod (the targetRef Pod name; None for no targetRef).
    ``ready`` applies to string items (a bool, or one bool per address). ``hostname``: one name
    for a single address, a prefix (``prefix-i``) for several, or one per address. ``ports`` are
    ints (unnamed, TCP: name "") or dicts name/protocol/port/appProtocol. ``address_type`` is
    guessed from the first address (IPv4 when empty). ``name`` defaults to ``<service>-<5 chars>``.
    """
    entries = _endpoint_entries(addresses, ready, hostname)
    if address_type is None:
        address_type = "IPv6" if entries and ":" in entries[0]["address"] else "IPv4"
    if name is None:
        name = f"{service}-{uid_for('Slice', ns, service)[:5]}"
    all_labels = {
        _MANAGED_BY_LABEL: _MANAGED_BY,
        _SERVICE_NAME_LABEL: service,
        **(labels or {}),
    }
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": service,
        "uid": service_uid or uid_for("Service", ns, service),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    meta = _metadata(
        "EndpointSlice",
        ns,
        name,
        uid=uid,
        labels=all_labels,
        annotations={_TRIGGER_TIME: _FIXED_TIME},
        extra={"generateName": f"{service}-", "ownerReferences": [owner]},
    )
    eps: list[Json] = []
    for i, e in enumerate(entries):
        ep: Json = {"addresses": [e["address"]]}
        ready_ = bool(e["ready"])
        terminating = bool(e.get("terminating", False))
        ep["conditions"] = {
            "ready": ready_ and not terminating,
            "serving": bool(e.get("serving", ready_)),
            "terminating": terminating,
        }
        if e.get("hostname"):
            ep["hostname"] = e["hostname"]
        ref = _target_ref(ns, e, service, i)
        if ref is not None:
            ep["targetRef"] = ref
        node = e.get("node_name", node_name)
        if node:
            ep["nodeName"] = node
        z = e.get("zone", zone)
        if z:
            ep["zone"] = z
        eps.append(ep)
    slice_ports: list[Json] = []
    for p in ports:
        if isinstance(p, int):
            slice_ports.append({"name": "", "protocol": "TCP", "port": p})
        else:
            sp: Json = {"name": p.get("name", ""), "protocol": p.get("protocol", "TCP")}
            sp["port"] = p["port"]
            if "appProtocol" in p:
                sp["appProtocol"] = p["appProtocol"]
            slice_ports.append(sp)
    obj: Json = {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta,
        "addressType": address_type,
        "endpoints": eps,
    }
    # The controller writes ports: [] (not null) for a slice with no ports only when it has
    # endpoints; an empty placeholder slice has neither.
    if slice_ports or eps:
        obj["ports"] = slice_ports
    return obj


def endpoints(
    ns: str,
    name: str,
    *,
    addresses: Sequence[str | Mapping[str, Any]] = (),
    ready: bool | Sequence[bool] = True,
    ports: Sequence[Port] = (80,),
    hostname: str | Sequence[str | None] | None = None,
    node_name: str | None = "node-1",
    labels: Mapping[str, str] | None = None,
    uid: str | None = None,
) -> Json:
    """A core/v1 Endpoints for Service ``ns/name`` (one subset), as the endpoints controller writes it.

    Arguments as for ``endpointslice``; ready addresses go to ``addresses``, the others to
    ``notReadyAddresses``; no addresses → no ``subsets`` key (as the API omits an empty list).
    """
    entries = _endpoint_entries(addresses, ready, hostname)
    meta = _metadata(
        "Endpoints",
        ns,
        name,
        uid=uid,
        labels=labels,
        annotations={_TRIGGER_TIME: _FIXED_TIME},
    )
    obj: Json = {"kind": "Endpoints", "apiVersion": "v1", "metadata": meta}
    if not entries:
        return obj
    ready_addrs: list[Json] = []
    not_ready: list[Json] = []
    for i, e in enumerate(entries):
        a: Json = {"ip": e["address"]}
        if e.get("hostname"):
            a["hostname"] = e["hostname"]
        node = e.get("node_name", node_name)
        if node:
            a["nodeName"] = node
        ref = _target_ref(ns, e, name, i)
        if ref is not None:
            a["targetRef"] = ref
        (ready_addrs if e["ready"] else not_ready).append(a)
    subset: Json = {}
    if ready_addrs:
        subset["addresses"] = ready_addrs
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    subset_ports: list[Json] = []
    for p in ports:
        if isinstance(p, int):
            subset_ports.append({"port": p, "protocol": "TCP"})
        else:
            sp: Json = {}
            if p.get("name"):
                sp["name"] = p["name"]
            sp["port"] = p["port"]
            sp["protocol"] = p.get("protocol", "TCP")
            if "appProtocol" in p:
                sp["appProtocol"] = p["appProtocol"]
            subset_ports.append(sp)
    subset["ports"] = subset_ports
    obj["subsets"] = [subset]
    return obj


def pod(
    ns: str,
    name: str,
    *,
    ip: str | None = None,
    ips: Sequence[str] | None = None,
    node_name: str = "node-1",
    host_ip: str = "192.168.0.11",
    labels: Mapping[str, str] | None = None,
    hostname: str | None = None,
    subdomain: str | None = None,
    phase: str = "Running",
    ready: bool = True,
    host_network: bool = False,
    uid: str | None = None,
) -> Json:
    """A core/v1 Pod, scheduled and (by default) Running and Ready, as the kubelet reports it.

    ``ip`` defaults to ``pod_ip_for(ns, name)`` (the host IP with ``host_network``); ``ips`` gives
    every pod IP (dual stack), the first being ``status.podIP``. Phase Pending gets no IPs.
    """
    if ips:
        pod_ips = list(ips)
    elif host_network:
        pod_ips = [host_ip]
    else:
        pod_ips = [ip or pod_ip_for(ns, name)]
    spec: Json = {
        "containers": [
            {
                "name": "app",
                "image": "registry.k8s.io/pause:3.9",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "nodeName": node_name,
    }
    if host_network:
        spec["hostNetwork"] = True
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    spec.update(
        {
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        }
    )
    cond = "True" if ready and phase == "Running" else "False"
    status: Json = {
        "phase": phase,
        "conditions": [
            {"type": t, "status": s, "lastProbeTime": None, "lastTransitionTime": _FIXED_TIME}
            for t, s in (
                ("Initialized", "True"),
                ("Ready", cond),
                ("ContainersReady", cond),
                ("PodScheduled", "True"),
            )
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
    }
    if phase != "Pending":
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": a} for a in pod_ips]
    status["startTime"] = _FIXED_TIME
    status["qosClass"] = "BestEffort"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": _metadata(
            "Pod", ns, name, uid=uid, labels=labels or {"app": name}, annotations=None
        ),
        "spec": spec,
        "status": status,
    }


def many_services(n: int, *, namespaces: int = 10, ports: Sequence[Port] = (80, 443)) -> list[Json]:
    """``n`` distinct ClusterIP Services spread over ``ns-0 … ns-{namespaces-1}`` (for load tests)."""
    return [service(f"ns-{i % namespaces}", f"svc-{i}", ports=ports) for i in range(n)]
