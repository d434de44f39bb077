"""The slim model: frozen Namespace / Service / EndpointSlice / Pod / Node / ServiceCIDR (and
ServiceImport) objects and their converters.

Kubernetes objects arrive as API dicts (from a manifest file or an API response) and are
converted once, here, into small frozen objects that keep only the fields DNS and the proxy use.
Equality of two converted objects therefore means "nothing DNS or the proxy can see changed".

Contract:
- `namespace_from_dict`, `service_from_dict`, `endpointslice_from_dict`,
  `endpoints_to_slices`, `pod_from_dict`, `node_from_dict`, `service_cidr_from_dict`, and for
  KEP-1645's multicluster API
  `serviceimport_from_dict` and `import_slice_from_dict` (an EndpointSlice labelled with a
  ServiceImport's name and its source cluster, `is_import_slice`), either return a model
  object or raise `ModelError` naming the offending field as a path (`spec.ports[0].port`),
  never a half-built object.
- Addresses are normalised (`ipaddress` compressed form), so two spellings of one IP compare equal.
- Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# RFC 1123 label (DNS-1123 label): what Kubernetes requires of namespace and service names.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 1123 subdomain: object names of most other kinds.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# RFC 6335 §5.1 service name (IANA_SVC_NAME): container port names and named targetPorts.
_PORT_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
# spec.trafficDistribution (KEP-4444, KEP-3015): PreferClose is the older name of PreferSameZone.
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")
# status.loadBalancer.ingress[].ipMode (KEP-1860): VIP, the default, or Proxy.
IP_MODES = ("VIP", "Proxy")
# The well-known Node label of its zone: what zone hints are matched against.
ZONE_LABEL = "topology.kubernetes.io/zone"
# The label an EndpointSlice carries to name its Service (discovery.k8s.io/v1).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The annotation the EndpointSlice controller sets to the time of the change that caused it.
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


# A value quoted in an error is cut short: a manifest's YAML aliases can make a small file hold a
# list whose full repr is megabytes, and an error is one line for a person (found by fuzzing).
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel = 3
_QUOTE.maxstring = _QUOTE.maxother = 200


def _shown(value: Any) -> str:
    return _QUOTE.repr(value)


class ModelError(ValueError):
    """An API object that cannot be converted; `field` is the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" when unnamed (a single-port Service may leave it out)
    protocol: str  # TCP | UDP | SCTP
    port: int
    target_port: int | str  # a number, or the name of a container port
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    # The ClusterIPs, primary first; () for a headless Service (clusterIP: None) and ExternalName.
    cluster_ips: tuple[str, ...] = ()
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    external_name: str = ""
    # None: no selector (endpoints are managed by someone else); otherwise sorted (key, value).
    selector: tuple[tuple[str, str], ...] | None = None
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    external_ips: tuple[str, ...] = ()
    # status.loadBalancer.ingress[].ip, every one; those whose ipMode is Proxy are also in
    # load_balancer_proxy_ips (traffic to them must go out to the load balancer, KEP-1860).
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_proxy_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool = False
    # spec.ipFamilies ("IPv4", "IPv6"); () when the Service does not say (headless, no selector).
    ip_families: tuple[str, ...] = ()
    # spec.trafficDistribution, "" when unset. Only the EndpointSlice controller reads it (it
    # becomes the endpoints' hints); kube-proxy routes by the hints alone.
    traffic_distribution: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of an EndpointSlice endpoint, with the ports its slice declares."""

    address: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    pod: str = ""  # name of the target Pod, when targetRef is a Pod
    ports: tuple[EndpointPort, ...] = ()
    # hints.forZones[].name and hints.forNodes[].name: where the EndpointSlice controller
    # wants this endpoint used (topology-aware routing); () when it gave no hint.
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str
    endpoints: tuple[Endpoint, ...] = ()
    # When the change behind this slice happened at the API server (epoch seconds), if known.
    trigger_time: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def service_key(self) -> tuple[str, str]:
        return (self.namespace, self.service_name)


@dataclass(frozen=True, slots=True)
class Node:
    """A Node as the proxy sees it: its name, and its zone for topology-aware routing."""

    name: str
    zone: str = ""  # the topology.kubernetes.io/zone label, "" when it has none

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """A `networking.k8s.io/v1` ServiceCIDR (KEP-1880): ranges ClusterIPs are allocated from.
    The proxy drops traffic to an address in them that no Service holds (KEP-3866)."""

    name: str
    cidrs: tuple[str, ...] = ()  # spec.cidrs, at most one per family, in canonical form

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    ips: tuple[str, ...] = ()  # status.podIPs, primary first
    phase: str = "Pending"
    ready: bool = False
    terminating: bool = False  # metadata.deletionTimestamp is set
    host_network: bool = False
    hostname: str = ""
    subdomain: str = ""
    node_name: str = ""
    container_ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# --- field readers -----------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], path: str, key: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(key)
    if value is None or value.__class__ is kind:
        return value  # the common case first: a bool's class is not int
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ModelError(
            _join(path, key), f"expected {_TYPE_WORDS.get(names, names)}, got {_shown(value)}"
        )
    return value


_TYPE_WORDS = {"dict": "a mapping", "list": "a list", "str": "a string", "int": "an integer"}


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _mapping(obj: Mapping[str, Any], path: str, key: str) -> Mapping[str, Any]:
    return _get(obj, path, key, dict) or {}


def _list(obj: Mapping[str, Any], path: str, key: str) -> list[Any]:
    return _get(obj, path, key, list) or []


def _str(obj: Mapping[str, Any], path: str, key: str, default: str = "") -> str:
    value = _get(obj, path, key, str)
    return default if value is None else value


def _port_number(obj: Mapping[str, Any], path: str, key: str, required: bool) -> int | None:
    value = _get(obj, path, key, int)
    if value is None:
        if required:
            raise ModelError(_join(path, key), "required field is missing")
        return None
    if not 1 <= value <= 65535:
        raise ModelError(_join(path, key), f"port {value} is out of range 1-65535")
    return value


def _ip(value: Any, field: str) -> str:
    # Python accepts IPv6 scope IDs ("fe80::1%eth0"); the Kubernetes API does not.
    if not isinstance(value, str) or "%" in value:
        raise ModelError(field, f"{_shown(value)} is not an IP address")
    if _is_canonical_ipv4(value):
        return value  # the common case, checked without ipaddress (a third of a list's time)
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        raise ModelError(field, f"{_shown(value)} is not an IP address") from None


def _is_canonical_ipv4(text: str) -> bool:
    """Dotted-quad IPv4 with no leading zeros: what the API server writes."""
    return _CANONICAL_IPV4.fullmatch(text) is not None


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4  # for an address _ip has already accepted


def _choice(value: str, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ModelError(field, f"{_shown(value)} is not one of {', '.join(allowed)}")
    return value


def _metadata(obj: Mapping[str, Any], namespaced: bool) -> tuple[str, str, Mapping[str, Any]]:
    meta = _mapping(obj, "", "metadata")
    name = _str(meta, "metadata", "name")
    if not name:
        raise ModelError("metadata.name", "required field is missing")
    namespace = ""
    if namespaced:
        # kubectl reads an absent or empty namespace as the default one.
        namespace = sys.intern(_str(meta, "metadata", "namespace") or "default")
        if not _DNS1123_LABEL.match(namespace):
            raise ModelError(
                "metadata.namespace", f"{_shown(namespace)} is not a valid DNS-1123 label"
            )
    return namespace, name, meta


def _labels(meta: Mapping[str, Any], path: str, key: str) -> tuple[tuple[str, str], ...]:
    labels = _mapping(meta, path, key)
    for k, v in labels.items():
        if not isinstance(v, str):
            raise ModelError(
                _join(_join(path, key), str(k)), f"label value {_shown(v)} is not a string"
            )
    return tuple(sorted((str(k), v) for k, v in labels.items()))


# --- converters --------------------------------------------------------------------------------


def namespace_from_dict(obj: Mapping[str, Any]) -> Namespace:
    _, name, _ = _metadata(obj, namespaced=False)
    if not _DNS1123_LABEL.match(name):
        raise ModelError("metadata.name", f"{_shown(name)} is not a valid DNS-1123 label")
    return Namespace(name)


def _service_port(raw: Any, path: str, service_type: str) -> ServicePort:
    if not isinstance(raw, dict):
        raise ModelError(path, f"expected a mapping, got {_shown(raw)}")
    name = _str(raw, path, "name")
    # Service port names are DNS-1123 labels (apiserver validateServicePort); the stricter
    # RFC 6335 rule applies only to container port names and so to named targetPorts.
    if name and not _DNS1123_LABEL.match(name):
        raise ModelError(_join(path, "name"), f"{_shown(name)} is not a valid DNS-1123 label")
    protocol = _choice(_str(raw, path, "protocol", "TCP"), _join(path, "protocol"), PROTOCOLS)
    port = _port_number(raw, path, "port", required=True)
    assert port is not None
    target: int | str
    raw_target = raw.get("targetPort")
    if raw_target is None:
        target = port
    elif isinstance(raw_target, bool):
        raise ModelError(
            _join(path, "targetPort"), f"expected a port number or name, got {_shown(raw_target)}"
        )
    elif isinstance(raw_target, int):
        target = _port_number(raw, path, "targetPort", required=True) or port
    elif isinstance(raw_target, str):
        # The API accepts a numeric string for an IntOrString; kube-proxy reads it as a number.
        target = int(raw_target) if raw_target.isdigit() else raw_target
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise ModelError(_join(path, "targetPort"), f"port {target} is out of range 1-65535")
        if isinstance(target, str) and not _PORT_NAME.match(target):
            raise ModelError(
                _join(path, "targetPort"), f"{_shown(target)} is not a valid port name"
            )
    else:
        raise ModelError(
            _join(path, "targetPort"), f"expected a port number or name, got {_shown(raw_target)}"
        )
    node_port = None
    if service_type in ("NodePort", "LoadBalancer"):
        node_port = _port_number(raw, path, "nodePort", required=False)
    return ServicePort(name, protocol, port, target, node_port)


def service_from_dict(obj: Mapping[str, Any]) -> Service:
    """A Service from its API object; raises ModelError naming the first bad field.

    The fields are checked in a fixed order (metadata, type, clusterIPs, ports, externalName,
    selector, affinity, externalIPs, load balancer, traffic policies), so a Service with
    several bad fields is always reported by the same one.
    """
    namespace, name, _meta = _metadata(obj, namespaced=True)
    if not _DNS1123_LABEL.match(name):
        raise ModelError("metadata.name", f"{_shown(name)} is not a valid DNS-1123 label")
    spec = _mapping(obj, "", "spec")
    stype = _choice(_str(spec, "spec", "type", "ClusterIP"), "spec.type", SERVICE_TYPES)
    headless, cluster_ips = _cluster_ips(spec, stype)
    ports = _service_ports(spec, stype)
    external_name = _external_name(spec, stype)
    raw_selector = spec.get("selector")
    selector = None if raw_selector is None else _labels(spec, "spec", "selector")
    affinity, timeout = _session_affinity(spec)
    external_ips = tuple(
        _ip(raw, f"spec.externalIPs[{i}]")
        for i, raw in enumerate(_list(spec, "spec", "externalIPs"))
    )
    ingress = _list(
        _mapping(_mapping(obj, "", "status"), "status", "loadBalancer"),
        "status.loadBalancer",
        "ingress",
    )
    lb_ips, proxy_ips = _load_balancer_ingress(ingress)
    ranges = _source_ranges(spec)
    etp = _traffic_policy(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy")
    itp = _traffic_policy(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy")
    return Service(
        namespace=namespace,
        name=name,
        type=stype,
        cluster_ips=cluster_ips,
        headless=headless,
        ports=ports,
        external_name=external_name,
        selector=selector,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        load_balancer_proxy_ips=proxy_ips,
        load_balancer_source_ranges=ranges,
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        health_check_node_port=_port_number(spec, "spec", "healthCheckNodePort", required=False),
        publish_not_ready_addresses=spec.get("publishNotReadyAddresses") is True,
        ip_families=_ip_families(spec, cluster_ips),
        traffic_distribution=_traffic_distribution(spec),
    )


def _cluster_ips(spec: Mapping[str, Any], stype: str) -> tuple[bool, tuple[str, ...]]:
    """(headless, the ClusterIPs) from `clusterIPs`, else the older single `clusterIP`; an
    ExternalName Service has none, whatever the fields say."""
    raw_ips = _list(spec, "spec", "clusterIPs")
    field = "spec.clusterIPs"
    if not raw_ips:
        single = spec.get("clusterIP")
        raw_ips = [] if single in (None, "") else [single]
        field = "spec.clusterIP"
    if raw_ips and raw_ips[0] == "None":
        return True, ()
    if stype == "ExternalName":
        return False, ()
    ips = []
    for i, raw in enumerate(raw_ips):
        ips.append(_ip(raw, field if field == "spec.clusterIP" else f"{field}[{i}]"))
    if len({_version(ip) for ip in ips}) != len(ips):
        raise ModelError(field, "dual-stack clusterIPs must hold one IPv4 and one IPv6 address")
    return False, tuple(ips)


def _service_ports(spec: Mapping[str, Any], stype: str) -> tuple[ServicePort, ...]:
    """`spec.ports`, each checked, then checked together: no port/protocol twice, and with
    several ports every one named, each name once."""
    ports = tuple(
        _service_port(raw, f"spec.ports[{i}]", stype)
        for i, raw in enumerate(_list(spec, "spec", "ports"))
    )
    seen: set[tuple[str, int]] = set()
    for i, p in enumerate(ports):
        if (p.protocol, p.port) in seen:
            raise ModelError(f"spec.ports[{i}]", f"duplicate port {p.port}/{p.protocol}")
        seen.add((p.protocol, p.port))
    if len(ports) > 1:
        names = [p.name for p in ports]
        for i, n in enumerate(names):
            if not n:
                raise ModelError(
                    f"spec.ports[{i}].name", "required when a Service has several ports"
                )
            if names.index(n) != i:
                raise ModelError(f"spec.ports[{i}].name", f"duplicate port name {_shown(n)}")
    return ports


def _external_name(spec: Mapping[str, Any], stype: str) -> str:
    """The lower-case name without its final dot an ExternalName Service aliases; "" for
    any other type."""
    if stype != "ExternalName":
        return ""
    external_name = _str(spec, "spec", "externalName").rstrip(".").lower()
    if not external_name:
        raise ModelError("spec.externalName", "required for a Service of type ExternalName")
    return external_name


def _session_affinity(spec: Mapping[str, Any]) -> tuple[str, int]:
    """(sessionAffinity, its timeout in seconds: 10800 unless given, 1-86400)."""
    affinity = _choice(
        _str(spec, "spec", "sessionAffinity", "None"), "spec.sessionAffinity", ("None", "ClientIP")
    )
    timeout = 10800
    cfg = _mapping(
        _mapping(spec, "spec", "sessionAffinityConfig"), "spec.sessionAffinityConfig", "clientIP"
    )
    if cfg.get("timeoutSeconds") is not None:
        timeout = _get(cfg, "spec.sessionAffinityConfig.clientIP", "timeoutSeconds", int)
        if not 1 <= timeout <= 86400:
            raise ModelError(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                f"{timeout} is out of range 1-86400",
            )
    return affinity, timeout


def _source_ranges(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """`spec.loadBalancerSourceRanges` as normalised CIDRs (a range with host bits set is read
    as its network)."""
    ranges = []
    for i, raw in enumerate(_list(spec, "spec", "loadBalancerSourceRanges")):
        try:
            ranges.append(str(ipaddress.ip_network(str(raw).strip(), strict=False)))
        except ValueError:
            raise ModelError(
                f"spec.loadBalancerSourceRanges[{i}]", f"{_shown(raw)} is not a CIDR"
            ) from None
    return tuple(ranges)


def _traffic_policy(spec: Mapping[str, Any], key: str, path: str) -> str:
    """`spec.externalTrafficPolicy` or `spec.internalTrafficPolicy` (`key`, at `path`): Cluster
    (the default) or Local."""
    return _choice(_str(spec, "spec", key, "Cluster"), path, ("Cluster", "Local"))


def _load_balancer_ingress(ingress: list[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every ingress IP, the ones with ipMode Proxy). Entries with only a hostname carry no
    IP to program and are skipped; an ipMode needs an ip (KEP-1860 validation)."""
    ips: list[str] = []
    proxy: list[str] = []
    for i, item in enumerate(ingress):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(item, dict):
            continue
        mode = _str(item, path, "ipMode")
        if mode:
            _choice(mode, _join(path, "ipMode"), IP_MODES)
        if not item.get("ip"):
            if mode:
                raise ModelError(_join(path, "ipMode"), "needs an ip in the same entry")
            continue
        ip = _ip(item.get("ip"), _join(path, "ip"))
        ips.append(ip)
        if mode == "Proxy":
            proxy.append(ip)
    return tuple(ips), tuple(proxy)


def _traffic_distribution(spec: Mapping[str, Any]) -> str:
    value = _str(spec, "spec", "trafficDistribution")
    return _choice(value, "spec.trafficDistribution", TRAFFIC_DISTRIBUTIONS) if value else ""


def _ip_families(spec: Mapping[str, Any], cluster_ips: tuple[str, ...]) -> tuple[str, ...]:
    families = []
    for i, raw in enumerate(_list(spec, "spec", "ipFamilies")):
        families.append(
            _choice(
                raw if isinstance(raw, str) else repr(raw),
                f"spec.ipFamilies[{i}]",
                ("IPv4", "IPv6"),
            )
        )
    if families:
        return tuple(families)
    # The API server fills ipFamilies from the ClusterIPs; manifests often leave it out.
    return tuple("IPv6" if ":" in ip else "IPv4" for ip in cluster_ips)


def _endpoint_ports(raw_ports: list[Any], path: str) -> tuple[EndpointPort, ...]:
    ports = []
    for i, raw in enumerate(raw_ports):
        p = _join(path, i)
        if not isinstance(raw, dict):
            raise ModelError(p, f"expected a mapping, got {_shown(raw)}")
        number = _port_number(raw, p, "port", required=False)
        if number is None:
            # discovery.k8s.io/v1: an unset port means "all ports"; DNS and the proxy skip it.
            continue
        protocol = _choice(_str(raw, p, "protocol", "TCP"), _join(p, "protocol"), PROTOCOLS)
        ports.append(EndpointPort(sys.intern(_str(raw, p, "name")), sys.intern(protocol), number))
    return tuple(ports)


def _hint_names(hints: Mapping[str, Any], path: str, key: str) -> tuple[str, ...]:
    """The names in hints.forZones or hints.forNodes (discovery.k8s.io/v1 ForZone, ForNode)."""
    names = []
    for i, raw in enumerate(_list(hints, path, key)):
        item = _join(_join(path, key), i)
        if not isinstance(raw, dict):
            raise ModelError(item, f"expected a mapping, got {_shown(raw)}")
        name = _str(raw, item, "name")
        if not name:
            raise ModelError(_join(item, "name"), "required field is missing")
        names.append(sys.intern(name))
    return tuple(names)


def _condition(conditions: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
    value = conditions.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelError(_join(path, key), f"expected true or false, got {_shown(value)}")
    return value


def _trigger_time(meta: Mapping[str, Any]) -> float | None:
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        return None
    raw = annotations.get(TRIGGER_TIME_ANNOTATION)
    if not isinstance(raw, str):
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # an annotation we cannot read only costs us the latency figure


def endpointslice_from_dict(obj: Mapping[str, Any]) -> EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice: its Service (the kubernetes.io/service-name
    label, required), address type, ports and one `Endpoint` per address (`_endpoints`)."""
    namespace, name, meta = _metadata(obj, namespaced=True)
    labels = _mapping(meta, "metadata", "labels")
    service_name = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service_name, str) or not service_name:
        raise ModelError(f"metadata.labels.{SERVICE_NAME_LABEL}", "required field is missing")
    address_type = _choice(_str(obj, "", "addressType", "IPv4"), "addressType", ADDRESS_TYPES)
    ports = _endpoint_ports(_list(obj, "", "ports"), "ports")
    return EndpointSlice(
        namespace,
        name,
        sys.intern(service_name),
        sys.intern(address_type),
        _endpoints(_list(obj, "", "endpoints"), address_type, ports),
        _trigger_time(meta),
    )


def _endpoints(
    raws: list[Any], address_type: str, ports: tuple[EndpointPort, ...]
) -> tuple[Endpoint, ...]:
    """A slice's `endpoints`, one `Endpoint` per address (none for an FQDN slice), each with
    the slice's `ports`; the first bad field raises `ModelError` naming it.

    Each endpoint's fields are read inline, not by a function per endpoint: this runs per
    endpoint of every slice the API sends (a relist of 50k Services). `_conditions` is one
    call for three fields; `_hints` runs only for an endpoint that has hints."""
    endpoints: list[Endpoint] = []
    for i, raw in enumerate(raws):
        path = f"endpoints[{i}]"
        if not isinstance(raw, dict):
            raise ModelError(path, f"expected a mapping, got {_shown(raw)}")
        ready, serving, terminating = _conditions(raw, path)
        target = _mapping(raw, path, "targetRef")
        pod = _str(target, _join(path, "targetRef"), "name") if target.get("kind") == "Pod" else ""
        hostname = _str(raw, path, "hostname").lower()
        if hostname and not _DNS1123_LABEL.match(hostname):
            raise ModelError(
                _join(path, "hostname"), f"{_shown(hostname)} is not a valid DNS-1123 label"
            )
        hints = _mapping(raw, path, "hints")
        zone_hints, node_hints = _hints(hints, _join(path, "hints")) if hints else _NO_HINTS
        addresses = _list(raw, path, "addresses")
        if not addresses:
            raise ModelError(_join(path, "addresses"), "an endpoint needs at least one address")
        for j, raw_address in enumerate(addresses):
            field = f"{path}.addresses[{j}]"
            if address_type == "FQDN":
                continue  # FQDN slices are deprecated and neither DNS nor the proxy use them
            address = _ip(raw_address, field)
            if (_version(address) == 4) != (address_type == "IPv4"):
                raise ModelError(field, f"{address} does not match addressType {address_type}")
            endpoints.append(
                Endpoint(
                    address=address,
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    hostname=hostname,
                    node_name=sys.intern(_str(raw, path, "nodeName")),
                    zone=sys.intern(_str(raw, path, "zone")),
                    pod=pod,
                    ports=ports,
                    zone_hints=zone_hints,
                    node_hints=node_hints,
                )
            )
    return tuple(endpoints)


def _conditions(raw: Mapping[str, Any], path: str) -> tuple[bool, bool, bool]:
    """An endpoint's (ready, serving, terminating) conditions.

    discovery.k8s.io/v1: an unset `ready` or `serving` is to be read as true (kube-proxy
    reads serving as `Serving == nil || *Serving`), an unset `terminating` as false. The
    usual three booleans are read in this one call (it runs per endpoint); a null or a value
    of another type goes field by field through `_condition`, whose error names it."""
    conditions = _mapping(raw, path, "conditions")
    ready = conditions.get("ready", True)
    serving = conditions.get("serving", True)
    terminating = conditions.get("terminating", False)
    if ready.__class__ is bool and serving.__class__ is bool and terminating.__class__ is bool:
        return ready, serving, terminating
    cpath = _join(path, "conditions")
    return (
        _condition(conditions, cpath, "ready", True),
        _condition(conditions, cpath, "serving", True),
        _condition(conditions, cpath, "terminating", False),
    )


_NO_HINTS: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


def _hints(hints: Mapping[str, Any], path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An endpoint's hints (topology-aware routing): its zones' and its nodes' names. Read
    only for an endpoint that has hints: most have none."""
    return _hint_names(hints, path, "forZones"), _hint_names(hints, path, "forNodes")


def endpoints_to_slices(obj: Mapping[str, Any]) -> tuple[EndpointSlice, ...]:
    """Convert a core/v1 Endpoints object into slices, one per subset and address family.

    The Endpoints controller lists ready addresses under `addresses` and the rest under
    `notReadyAddresses`; the Endpoints object is named after its Service.
    """
    namespace, name, meta = _metadata(obj, namespaced=True)
    slices: list[EndpointSlice] = []
    for i, subset in enumerate(_list(obj, "", "subsets")):
        path = f"subsets[{i}]"
        if not isinstance(subset, dict):
            raise ModelError(path, f"expected a mapping, got {_shown(subset)}")
        ports = _endpoint_ports(_list(subset, path, "ports"), _join(path, "ports"))
        by_family: dict[str, list[Endpoint]] = {"IPv4": [], "IPv6": []}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, raw in enumerate(_list(subset, path, key)):
                apath = f"{path}.{key}[{j}]"
                if not isinstance(raw, dict):
                    raise ModelError(apath, f"expected a mapping, got {_shown(raw)}")
                address = _ip(raw.get("ip"), _join(apath, "ip"))
                family = "IPv4" if _version(address) == 4 else "IPv6"
                target = _mapping(raw, apath, "targetRef")
                by_family[family].append(
                    Endpoint(
                        address=address,
                        ready=ready,
                        serving=ready,
                        terminating=False,
                        hostname=_str(raw, apath, "hostname").lower(),
                        node_name=_str(raw, apath, "nodeName"),
                        pod=_str(target, _join(apath, "targetRef"), "name")
                        if target.get("kind") == "Pod"
                        else "",
                        ports=ports,
                    )
                )
        for family, endpoints in by_family.items():
            if endpoints:
                slices.append(
                    EndpointSlice(
                        namespace,
                        f"{name}-{i}-{family.lower()}",
                        name,
                        family,
                        tuple(endpoints),
                        _trigger_time(meta),
                    )
                )
    return tuple(slices)


def node_from_dict(obj: Mapping[str, Any]) -> Node:
    _namespace, name, meta = _metadata(obj, namespaced=False)
    labels = dict(_labels(meta, "metadata", "labels"))
    return Node(name=name, zone=labels.get(ZONE_LABEL, ""))


def service_cidr_from_dict(obj: Mapping[str, Any]) -> ServiceCIDR:
    """The API server's validation of `spec.cidrs` (networking/validation ValidateServiceCIDR):
    one or two CIDRs, each in canonical form (no host bits), two only if one per family."""
    _namespace, name, _meta = _metadata(obj, namespaced=False)
    raw_cidrs = _list(_mapping(obj, "", "spec"), "spec", "cidrs")
    if not raw_cidrs:
        raise ModelError("spec.cidrs", "required field is missing")
    if len(raw_cidrs) > 2:
        raise ModelError("spec.cidrs", f"at most 2 CIDRs (one per IP family), got {len(raw_cidrs)}")
    cidrs: list[str] = []
    for i, raw in enumerate(raw_cidrs):
        field = f"spec.cidrs[{i}]"
        try:
            # "10.96.0.0" alone is a /32 to Python, but no CIDR to the API server.
            text = raw if isinstance(raw, str) and "/" in raw else ""
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ModelError(field, f"{_shown(raw)} is not a CIDR without host bits") from None
        if cidrs and ipaddress.ip_network(cidrs[0]).version == net.version:
            raise ModelError(field, "two CIDRs must be of different IP families")
        cidrs.append(net.compressed)
    return ServiceCIDR(name=name, cidrs=tuple(cidrs))


def pod_from_dict(obj: Mapping[str, Any]) -> Pod:
    namespace, name, meta = _metadata(obj, namespaced=True)
    spec = _mapping(obj, "", "spec")
    status = _mapping(obj, "", "status")
    ips: list[str] = []
    for i, raw in enumerate(_list(status, "status", "podIPs")):
        if isinstance(raw, dict):
            ips.append(_ip(raw.get("ip"), f"status.podIPs[{i}].ip"))
    if not ips and status.get("podIP"):
        ips.append(_ip(status.get("podIP"), "status.podIP"))
    ready = False
    for i, cond in enumerate(_list(status, "status", "conditions")):
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            if cond.get("status") not in ("True", "False", "Unknown"):
                raise ModelError(
                    f"status.conditions[{i}].status", "expected True, False or Unknown"
                )
    container_ports: list[ContainerPort] = []
    for ci, container in enumerate(_list(spec, "spec", "containers")):
        cpath = f"spec.containers[{ci}]"
        if not isinstance(container, dict):
            raise ModelError(cpath, f"expected a mapping, got {_shown(container)}")
        for pi, raw in enumerate(_list(container, cpath, "ports")):
            ppath = f"{cpath}.ports[{pi}]"
            if not isinstance(raw, dict):
                raise ModelError(ppath, f"expected a mapping, got {_shown(raw)}")
            number = _port_number(raw, ppath, "containerPort", required=True)
            assert number is not None
            protocol = _choice(
                _str(raw, ppath, "protocol", "TCP"), _join(ppath, "protocol"), PROTOCOLS
            )
            container_ports.append(ContainerPort(_str(raw, ppath, "name"), protocol, number))
    hostname = _str(spec, "spec", "hostname").lower()
    if hostname and not _DNS1123_LABEL.match(hostname):
        raise ModelError("spec.hostname", f"{_shown(hostname)} is not a valid DNS-1123 label")
    subdomain = _str(spec, "spec", "subdomain").lower()
    if subdomain and not _DNS1123_LABEL.match(subdomain):
        raise ModelError("spec.subdomain", f"{_shown(subdomain)} is not a valid DNS-1123 label")
    return Pod(
        namespace=namespace,
        name=name,
        labels=_labels(meta, "metadata", "labels"),
        ips=tuple(ips),
        phase=_str(status, "status", "phase", "Pending"),
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
        host_network=spec.get("hostNetwork") is True,
        hostname=hostname,
        subdomain=subdomain,
        node_name=_str(spec, "spec", "nodeName"),
        container_ports=tuple(container_ports),
    )


def selector_matches(
    selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]
) -> bool:
    """A Service selector (equality-based, as Services allow) matches a Pod's labels."""
    if not selector:
        return False  # an empty selector selects nothing for Services (the controller skips it)
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def slices_for_service(service: Service, pods: list[Pod]) -> tuple[EndpointSlice, ...]:
    """The EndpointSlices the EndpointSlice controller would write for `service` and `pods`.

    Follows kubernetes/kubernetes staging/src/k8s.io/endpointslice (podToEndpoint): pods that
    are Succeeded or Failed, or have no IP yet, are left out; only the Service's IP families get
    a slice; the hostname is the Pod's `spec.hostname` only when its `spec.subdomain` equals the
    Service's name; ready = publishNotReadyAddresses or (serving and not terminating), serving =
    the Pod's Ready condition.
    """
    if service.selector is None or service.type == "ExternalName":
        return ()
    by_family: dict[str, list[Endpoint]] = {"IPv4": [], "IPv6": []}
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.namespace != service.namespace or not pod.ips:
            continue
        if pod.phase in ("Succeeded", "Failed") or not selector_matches(
            service.selector, pod.labels
        ):
            continue
        ports = _pod_ports(service, pod)
        serving = pod.ready
        ready = service.publish_not_ready_addresses or (serving and not pod.terminating)
        hostname = pod.hostname if pod.hostname and pod.subdomain == service.name else ""
        for ip in pod.ips:
            family = "IPv4" if _version(ip) == 4 else "IPv6"
            if service.ip_families and family not in service.ip_families:
                continue
            by_family[family].append(
                Endpoint(
                    address=ip,
                    ready=ready,
                    serving=serving,
                    terminating=pod.terminating,
                    hostname=hostname,
                    node_name=pod.node_name,
                    pod=pod.name,
                    ports=ports,
                )
            )
    return tuple(
        EndpointSlice(
            service.namespace, f"{service.name}-{family.lower()}", service.name, family, tuple(eps)
        )
        for family, eps in by_family.items()
        if eps
    )


def _pod_ports(service: Service, pod: Pod) -> tuple[EndpointPort, ...]:
    """The endpoint ports of `pod` for `service`: a numeric targetPort as it is, a named one
    as the pod's container port of that name and protocol; a name the pod does not have gives
    no port (the EndpointSlice controller's `FindPort` fails and leaves it out)."""
    ports: list[EndpointPort] = []
    for sp in service.ports:
        if isinstance(sp.target_port, int):
            ports.append(EndpointPort(sp.name, sp.protocol, sp.target_port))
            continue
        for cp in pod.container_ports:
            if cp.name == sp.target_port and cp.protocol == sp.protocol:
                ports.append(EndpointPort(sp.name, sp.protocol, cp.port))
                break
    return tuple(ports)


# --- multicluster (KEP-1645, multicluster.x-k8s.io/v1alpha1) ----------------------------------

# The labels an MCS controller puts on the EndpointSlices it imports: the ServiceImport's name
# and the cluster the endpoints live in (one cluster per slice).
IMPORT_NAME_LABEL = "multicluster.kubernetes.io/service-name"
SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
IMPORT_TYPES = ("ClusterSetIP", "Headless")


@dataclass(frozen=True, slots=True)
class ServiceImport:
    """A ServiceImport: a Service exported by the clusters of a clusterset."""

    namespace: str
    name: str
    type: str = "ClusterSetIP"
    ips: tuple[str, ...] = ()  # spec.ips: the ClusterSetIPs (at most one per family)
    ports: tuple[EndpointPort, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return self.type == "Headless"


@dataclass(frozen=True, slots=True)
class ImportSlice:
    """An EndpointSlice of a ServiceImport: the endpoints of one cluster of the clusterset."""

    namespace: str
    name: str
    import_name: str
    cluster_id: str
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def import_key(self) -> tuple[str, str]:
        return (self.namespace, self.import_name)


def is_import_slice(obj: Mapping[str, Any]) -> bool:
    """An EndpointSlice an MCS controller made for a ServiceImport (not for a local Service)."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return (
        isinstance(labels, dict)
        and IMPORT_NAME_LABEL in labels
        and SERVICE_NAME_LABEL not in labels
    )


def serviceimport_from_dict(obj: Mapping[str, Any]) -> ServiceImport:
    namespace, name, _ = _metadata(obj, namespaced=True)
    if not _DNS1123_LABEL.match(name):
        raise ModelError("metadata.name", f"{_shown(name)} is not a valid DNS-1123 label")
    spec = _mapping(obj, "", "spec")
    itype = _choice(_str(spec, "spec", "type", "ClusterSetIP"), "spec.type", IMPORT_TYPES)
    ips = tuple(_ip(raw, f"spec.ips[{i}]") for i, raw in enumerate(_list(spec, "spec", "ips")))
    if len({_version(ip) for ip in ips}) != len(ips):
        raise ModelError("spec.ips", "holds at most one IPv4 and one IPv6 address")
    ports = _endpoint_ports(_list(spec, "spec", "ports"), "spec.ports")
    # A headless import has no ClusterSetIP (KEP-1645); one that lists some is read as headless.
    return ServiceImport(namespace, name, itype, () if itype == "Headless" else ips, ports)


def import_slice_from_dict(obj: Mapping[str, Any]) -> ImportSlice:
    meta = _mapping(obj, "", "metadata")
    labels = _mapping(meta, "metadata", "labels")
    values: list[str] = []
    for label in (IMPORT_NAME_LABEL, SOURCE_CLUSTER_LABEL):
        value = labels.get(label)
        if not isinstance(value, str) or not _DNS1123_LABEL.match(value):
            problem = "required field is missing" if value is None else "is not a DNS-1123 label"
            raise ModelError(f"metadata.labels.{label}", problem)
        values.append(value)
    # Read as a local slice of a Service of that name: the endpoints' fields are the same.
    local = dict(obj, metadata=dict(meta, labels={**labels, SERVICE_NAME_LABEL: values[0]}))
    parsed = endpointslice_from_dict(local)
    return ImportSlice(
        parsed.namespace,
        parsed.name,
        sys.intern(values[0]),
        sys.intern(values[1]),
        parsed.endpoints,
    )
