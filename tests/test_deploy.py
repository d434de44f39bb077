"""config/kubernetes/ and the Dockerfile: they load through kdns's own manifest reader, pass the
security review field by field, and agree with each other and with kdns's defaults (ports, the
config path, the image names, the API resources kdns reads)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dnslib import QTYPE

from kdns import cli, proxyapp
from kdns.config import Config, env_overrides, load_config, parse_hostport
from kdns.corefile.load import load_corefile
from kdns.dns.resolver import Resolver
from kdns.sources import kube
from kdns.sources.manifests import load
from kdns.sources.static import ManifestSource
from kdns.store import KINDS, Store
from tests.e2e.conftest import run_kdns

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "config" / "kubernetes"
FILES = sorted(DEPLOY.glob("*.yaml"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PROXY_FLAGS = {
    "--mode",
    "--node-name",
    "--cluster-cidr",
    "--nodeport-addresses",
    "--min-sync-period",
    "--sync-period",
    "--masquerade-all",
    "--healthz-addr",
    "--metrics-addr",
    "--kubeconfig",
    "--manifests",
}


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of config/kubernetes by (kind, name)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in out, key
                out[key] = doc
    return out


OBJ = objects()
DEPLOYMENT = OBJ[("Deployment", "kdns")]
POD = DEPLOYMENT["spec"]["template"]
KDNS = POD["spec"]["containers"][0]
SERVICE = OBJ[("Service", "kube-dns")]
DAEMONSET = OBJ[("DaemonSet", "kdns-proxy")]
PROXY = DAEMONSET["spec"]["template"]["spec"]["containers"][0]
NODE_DAEMONSET = OBJ[("DaemonSet", "kdns-node")]
NODE = NODE_DAEMONSET["spec"]["template"]["spec"]["containers"][0]
SIDECAR_POD = OBJ[("Pod", "dns-test")]


def config_of_deployment(tmp_path: Path) -> tuple[Config, str]:
    """The Config the Deployment's kdns runs with (the ConfigMap, as mounted), and its path."""
    args = KDNS["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in KDNS["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == mount["name"])
    configmap = OBJ[("ConfigMap", volume["configMap"]["name"])]
    item = next(i for i in volume["configMap"]["items"] if i["path"] == path.split("/")[-1])
    assert Path(mount["mountPath"]) / item["path"] == Path(path)
    assert mount.get("readOnly") is True
    local = tmp_path / "kdns.yaml"
    local.write_text(configmap["data"][item["key"]])
    return load_config(str(local)), path


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            current = []
            stages[line.split()[-1]] = current
        current.append(line)
    return stages


# --- the manifest reader ------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_loads_through_the_manifest_reader(path: Path) -> None:
    _, errors = load([str(path)])
    assert [str(e) for e in errors] == []


def test_the_folder_serves_the_cluster_dns_service() -> None:
    store = Store(KINDS)
    source = ManifestSource([str(DEPLOY)], store)
    assert source.load() == []
    source.apply()
    assert source.ignored == {
        "ClusterRole": 2,
        "ClusterRoleBinding": 2,
        "ConfigMap": 3,
        "DaemonSet": 2,
        "Deployment": 2,
        "PodDisruptionBudget": 2,
        "ServiceAccount": 2,
    }
    resolver = Resolver(store, Config())
    answer = resolver.resolve("kube-dns.kube-system.svc.cluster.local", QTYPE.A)
    assert answer is not None
    assert [str(rr.rdata) for rr in answer.answer] == ["10.96.0.10"]
    srv = resolver.resolve("_dns._udp.kube-dns.kube-system.svc.cluster.local", QTYPE.SRV)
    assert srv is not None and [rr.rdata.port for rr in srv.answer] == [53]
    # The apex NS names the cluster DNS Service, as the coredns/ci tests expect.
    ns = resolver.resolve("cluster.local", QTYPE.NS)
    assert ns is not None
    assert [str(rr.rdata) for rr in ns.answer] == ["kube-dns.kube-system.svc.cluster.local."]


def test_kdns_check_reports_the_ignored_kinds() -> None:
    result = run_kdns("check", "--manifests", str(DEPLOY))
    assert result.returncode == 0, result.stderr
    assert (
        "ignored: 2 ClusterRole, 2 ClusterRoleBinding, 3 ConfigMap, 2 DaemonSet, 2 Deployment, "
        "2 PodDisruptionBudget, 2 ServiceAccount"
    ) in result.stdout.splitlines()


def test_kdns_check_reports_ignored_kinds_of_the_examples() -> None:
    result = run_kdns("check", "--manifests", str(ROOT / "config" / "examples"))
    assert result.returncode == 0, result.stderr
    assert "ignored: 1 ConfigMap" in result.stdout.splitlines()


# --- the DNS Deployment -------------------------------------------------------------------------


def test_dns_pod_security() -> None:
    spec = POD["spec"]
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in spec and "sysctls" not in pod_security
    container = KDNS["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}  # nothing added, not even NET_BIND
    assert container.get("privileged", False) is False
    assert "runAsUser" not in container or container["runAsUser"] == pod_security["runAsUser"]


def test_dns_pod_runs_as_the_images_user() -> None:
    kdns_stage = dockerfile_stages()["kdns"]
    user = next(line for line in kdns_stage if line.startswith("USER "))
    uid, gid = (int(x) for x in user.split()[1].split(":"))
    assert uid != 0
    assert POD["spec"]["securityContext"]["runAsUser"] == uid
    assert POD["spec"]["securityContext"]["runAsGroup"] == gid


def test_dns_probes_match_the_config(tmp_path: Path) -> None:
    config, _ = config_of_deployment(tmp_path)
    live, ready = KDNS["livenessProbe"]["httpGet"], KDNS["readinessProbe"]["httpGet"]
    assert (live["path"], live["port"]) == ("/health", parse_hostport(config.dns.health_addr)[1])
    assert (ready["path"], ready["port"]) == ("/ready", parse_hostport(config.dns.ready_addr)[1])
    # The same ports as kdns's defaults and CoreDNS's manifests.
    assert live["port"] == parse_hostport(Config().dns.health_addr)[1] == 8080
    assert ready["port"] == parse_hostport(Config().dns.ready_addr)[1] == 8181


def test_service_ports_reach_where_kdns_listens(tmp_path: Path) -> None:
    config, _ = config_of_deployment(tmp_path)
    dns_port = parse_hostport(config.dns.addr)[1]
    metrics_port = parse_hostport(config.dns.metrics_addr)[1]
    assert parse_hostport(config.dns.addr)[0] == "0.0.0.0"
    assert dns_port > 1023  # a non-root process without NET_BIND_SERVICE can bind it
    spec = SERVICE["spec"]
    assert spec["clusterIP"] == "10.96.0.10"
    assert SERVICE["metadata"]["namespace"] == "kube-system"
    assert SERVICE["metadata"]["labels"]["k8s-app"] == "kube-dns"
    ports = {(p["name"], p["protocol"], p["port"], p["targetPort"]) for p in spec["ports"]}
    assert ports == {
        ("dns", "UDP", 53, dns_port),
        ("dns-tcp", "TCP", 53, dns_port),
        ("metrics", "TCP", 9153, metrics_port),
    }
    declared = {(p["protocol"], p["containerPort"]) for p in KDNS["ports"]}
    assert {(p, t) for _, p, _, t in ports} == declared
    labels = POD["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"].items())
    exposed = set(
        " ".join(line for line in dockerfile_stages()["kdns"] if line.startswith("EXPOSE ")).split()
    )
    assert {f"{dns_port}/udp", f"{dns_port}/tcp", f"{metrics_port}/tcp"} <= exposed


def test_dns_deployment_settings() -> None:
    spec = POD["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["dnsPolicy"] == "Default"
    assert DEPLOYMENT["spec"]["replicas"] >= 2
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert all(POD["metadata"]["labels"].get(k) == v for k, v in selector.items())
    pdb = OBJ[("PodDisruptionBudget", "kdns")]
    assert pdb["metadata"]["namespace"] == DEPLOYMENT["metadata"]["namespace"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    resources = KDNS["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}  # no CPU limit: throttling stalls DNS


def test_the_config_file_is_the_mounted_configmap(tmp_path: Path) -> None:
    config, path = config_of_deployment(tmp_path)
    assert KDNS["args"] == ["serve", "--config", path]
    assert config.kubernetes.manifests == () and config.kubernetes.kubeconfig == ""  # in-cluster
    # The arguments parse as kdns's own command line does (tests set KDNS_RESOLV_CONF).
    args = cli.parse_args(["serve", "--config", str(tmp_path / "kdns.yaml")])
    assert cli.config_of(args) == config.with_overrides(**env_overrides(dict(os.environ)))


# --- the Corefile variant: the cluster's own `coredns` ConfigMap -------------------------------

COREFILE_DEPLOYMENT = OBJ[("Deployment", "kdns-corefile")]
COREFILE_POD = COREFILE_DEPLOYMENT["spec"]["template"]
COREFILE_KDNS = COREFILE_POD["spec"]["containers"][0]
KUBEADM_COREFILE = ROOT / "tests" / "corefile" / "data" / "kubeadm.Corefile"


def test_corefile_variant_reads_the_coredns_configmap() -> None:
    assert COREFILE_KDNS["args"] == ["serve", "--corefile", "/etc/coredns/Corefile"]
    mounts = {m["mountPath"]: m for m in COREFILE_KDNS["volumeMounts"]}
    volumes = {v["name"]: v for v in COREFILE_POD["spec"]["volumes"]}
    config = volumes[mounts["/etc/coredns"]["name"]]["configMap"]
    # Every key (k3s adds NodeHosts), so no `items` a distribution could lack.
    assert config == {"name": "coredns"}
    custom = volumes[mounts["/etc/coredns/custom"]["name"]]["configMap"]
    assert custom == {"name": "coredns-custom", "optional": True}  # k3s's and AKS's imports
    assert all(m.get("readOnly") for p, m in mounts.items() if p.startswith("/etc/coredns"))


def test_corefile_variant_serves_what_the_kubeadm_corefile_says(tmp_path: Path) -> None:
    """kubeadm's Corefile, as that ConfigMap holds it: kdns takes it as it is, and listens,
    probes and exports metrics on the ports the pod declares and kube-dns's Service targets."""
    mounted = tmp_path / "Corefile"
    mounted.write_text(KUBEADM_COREFILE.read_text())
    config, translation = load_corefile(str(mounted), {})
    assert translation.refused == ()
    dns_port = parse_hostport(config.dns.addr)[1]
    assert dns_port == 53
    declared = {(p["name"], p["protocol"], p["containerPort"]) for p in COREFILE_KDNS["ports"]}
    metrics_port = parse_hostport(config.dns.metrics_addr)[1]
    assert declared == {
        ("dns", "UDP", dns_port),
        ("dns-tcp", "TCP", dns_port),
        ("metrics", "TCP", metrics_port),
    }
    live = COREFILE_KDNS["livenessProbe"]["httpGet"]
    ready = COREFILE_KDNS["readinessProbe"]["httpGet"]
    assert live["port"] == parse_hostport(config.dns.health_addr)[1]
    assert ready["port"] == parse_hostport(config.dns.ready_addr)[1]
    # Port 53 as the non-root image user: the per-pod sysctl lowers the privileged range.
    security = COREFILE_POD["spec"]["securityContext"]
    sysctls = {s["name"]: int(s["value"]) for s in security["sysctls"]}
    assert sysctls["net.ipv4.ip_unprivileged_port_start"] <= dns_port


def test_corefile_variant_is_selected_by_kube_dns_and_as_locked_down() -> None:
    labels = COREFILE_POD["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in SERVICE["spec"]["selector"].items())
    # Its own selector: never adopts the pods of kdns-deployment.yaml.
    own = COREFILE_DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert own != DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert OBJ[("PodDisruptionBudget", "kdns-corefile")]["spec"]["selector"]["matchLabels"] == own
    spec = COREFILE_POD["spec"]
    assert spec["serviceAccountName"] == POD["spec"]["serviceAccountName"]
    assert (spec["dnsPolicy"], spec["priorityClassName"]) == ("Default", "system-cluster-critical")
    assert COREFILE_KDNS["securityContext"] == KDNS["securityContext"]
    assert COREFILE_KDNS["image"] == KDNS["image"]
    pod_security = {k: v for k, v in spec["securityContext"].items() if k != "sysctls"}
    assert pod_security == POD["spec"]["securityContext"]


def test_images_are_what_the_dockerfile_builds() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages()
    assert KDNS["image"] == f"kdns:{VERSION}"
    assert PROXY["image"] == f"kdns-proxy:{VERSION}"
    assert f"docker build -t {KDNS['image']} ." in text
    assert f"docker build --target proxy -t {PROXY['image']} ." in text
    assert f'org.opencontainers.image.version="{VERSION}"' in text
    # The default target (the last stage) is the DNS server; both run `kdns`.
    assert list(stages)[-1] == "kdns"
    assert 'ENTRYPOINT ["kdns"]' in stages["base"]
    assert all(s in stages for s in ("build", "base", "proxy"))
    sidecar = next(c for c in SIDECAR_POD["spec"]["containers"] if c["name"] == "kdns")
    assert sidecar["image"] == KDNS["image"]


# --- RBAC -------------------------------------------------------------------------------------


def resources_kdns_reads(proxy: bool = False) -> set[tuple[str, str]]:
    """(API group, resource) of every Reflector in kdns/sources/kube.py that `kdns serve` (or,
    with `proxy`, `kdns proxy`) runs: only DNS reads Pods and ServiceImports, only the proxy its
    Node and the ServiceCIDRs."""
    out = set()
    for value in vars(kube).values():
        if isinstance(value, kube.Resource):
            if value.kind in (("pods",) if proxy else ("nodes", "servicecidrs")):
                continue
            if value.kind == "serviceimports" and proxy:
                continue  # the proxy serves no clusterset names
            parts = value.path.strip("/").split("/")
            group = "" if parts[0] == "api" else parts[1]
            out.add((group, parts[-1]))
    return out


def rules_of(role: str) -> tuple[set[tuple[str, str]], set[str]]:
    resources: set[tuple[str, str]] = set()
    verbs: set[str] = set()
    for rule in OBJ[("ClusterRole", role)]["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        resources |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
        verbs |= set(rule["verbs"])
    return resources, verbs


def test_dns_role_is_list_and_watch_of_exactly_what_kdns_reads() -> None:
    resources, verbs = rules_of("system:kdns")
    assert resources_kdns_reads() == {
        ("", "services"),
        ("", "endpoints"),
        ("", "namespaces"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("multicluster.x-k8s.io", "serviceimports"),
    }
    assert resources == resources_kdns_reads()
    assert verbs == {"list", "watch"}
    binding = OBJ[("ClusterRoleBinding", "system:kdns")]
    assert binding["roleRef"]["name"] == "system:kdns"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": POD["spec"]["serviceAccountName"],
            "namespace": "kube-system",
        }
    ]
    assert ("ServiceAccount", POD["spec"]["serviceAccountName"]) in OBJ


def test_proxy_role_reads_no_pods() -> None:
    resources, verbs = rules_of("system:kdns-proxy")
    assert resources == resources_kdns_reads(proxy=True)
    assert ("", "nodes") in resources  # its own Node's zone, for topology hints
    assert ("networking.k8s.io", "servicecidrs") in resources  # unallocated ClusterIPs
    assert verbs == {"list", "watch"}
    binding = OBJ[("ClusterRoleBinding", "system:kdns-proxy")]
    assert (
        binding["subjects"][0]["name"]
        == DAEMONSET["spec"]["template"]["spec"]["serviceAccountName"]
    )


# --- the proxy DaemonSet ----------------------------------------------------------------------


def test_proxy_daemonset() -> None:
    spec = DAEMONSET["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = PROXY["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    args = PROXY["args"]
    assert args[0] == "proxy" and args[args.index("--mode") + 1] in ("iptables", "nftables")
    flags = {a for a in args if a.startswith("--")}
    assert flags <= PROXY_FLAGS, flags - PROXY_FLAGS
    # `kdns proxy`'s own parser and checks take them, as the kubelet passes them.
    parsed = cli.parse_args([a.replace("$(NODE_NAME)", "node-1") for a in args])
    options = cli.proxy_options(cli.config_of(parsed))
    assert proxyapp.check_options(options) == []
    assert options.node_name == "node-1" and options.mode == "iptables"
    assert args[args.index("--node-name") + 1] == "$(NODE_NAME)"
    env = {e["name"]: e for e in PROXY["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    healthz = parse_hostport(options.healthz_addr)
    assert PROXY["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": healthz[1],
        "scheme": "HTTP",
    }
    assert healthz[1] == 10256
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in PROXY["volumeMounts"]}
    lock = mounts["/run/xtables.lock"]
    assert lock.get("readOnly", False) is False
    assert volumes[lock["name"]]["hostPath"] == {
        "path": "/run/xtables.lock",
        "type": "FileOrCreate",
    }
    modules = mounts["/lib/modules"]
    assert modules["readOnly"] is True
    assert volumes[modules["name"]]["hostPath"]["path"] == "/lib/modules"
    # Its kubeconfig names the API server directly, with the service account's credentials.
    kubeconfig_path = args[args.index("--kubeconfig") + 1]
    kmount = next(m for m in PROXY["volumeMounts"] if kubeconfig_path.startswith(m["mountPath"]))
    configmap = OBJ[("ConfigMap", volumes[kmount["name"]]["configMap"]["name"])]
    document = yaml.safe_load(configmap["data"][Path(kubeconfig_path).name])
    user = document["users"][0]["user"]
    assert user == {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}


def test_node_daemonset_is_the_proxy_daemonset_plus_the_node_dns() -> None:
    # The same pod as kdns-proxy (host network, capabilities, probes, volumes), plus --dns.
    proxy_spec = DAEMONSET["spec"]["template"]["spec"]
    node_spec = NODE_DAEMONSET["spec"]["template"]["spec"]
    assert {k: v for k, v in node_spec.items() if k != "containers"} == {
        k: v for k, v in proxy_spec.items() if k != "containers"
    }
    for key in ("securityContext", "livenessProbe", "env", "volumeMounts", "image"):
        assert NODE[key] == PROXY[key], key
    args = NODE["args"]
    dns = args.index("--dns")
    assert args[:dns] + args[dns + 2 :] == PROXY["args"]
    parsed = cli.parse_args([a.replace("$(NODE_NAME)", "node-1") for a in args])
    options = cli.proxy_options(cli.config_of(parsed))
    assert proxyapp.check_options(options) == []
    # The kube-dns ClusterIP is taken over (kubelet's --cluster-dns stays), and the link-local
    # address of NodeLocal DNSCache answers too.
    assert options.dns_addresses == (SERVICE["spec"]["clusterIP"], proxyapp.NODE_DNS_DEFAULT)
    ports = {(p["containerPort"], p["protocol"]) for p in NODE["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (10256, "TCP")} <= ports
    assert "--cluster-dns" in (DEPLOY / "kdns-node.yaml").read_text()


def test_node_daemonset_surges_with_a_readiness_of_its_own_process() -> None:
    """A surge rollout: the new pod starts before the old one stops (the ports are shared,
    kdns/http.py), and it is ready when its own process listens on the health port, which a
    surging proxy does once ready (tests/e2e/test_surge.py runs this probe)."""
    strategy = NODE_DAEMONSET["spec"]["updateStrategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    node = NODE_DAEMONSET["spec"]["template"]["spec"]["containers"][0]
    probe = node["readinessProbe"]
    assert "httpGet" not in probe  # answered by whichever process the kernel picks
    command = probe["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    port = parse_hostport(node["args"][node["args"].index("--healthz-addr") + 1])[1]
    assert f"sport = :{port}" in command[2] and "pid=" in command[2]


def test_node_daemonset_reads_pods_exactly_when_its_node_dns_has_autopath() -> None:
    # `--dns-autopath` watches this node's Pods: the DaemonSet's ServiceAccount must then be
    # allowed to list and watch pods, and otherwise is not (the proxy reads no Pod).
    account = NODE_DAEMONSET["spec"]["template"]["spec"]["serviceAccountName"]
    readable: set[tuple[str, str]] = set()
    for (kind, _), binding in OBJ.items():
        if kind == "ClusterRoleBinding" and any(
            s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]
        ):
            resources, verbs = rules_of(binding["roleRef"]["name"])
            if {"list", "watch"} <= verbs:
                readable |= resources
    parsed = cli.parse_args([a.replace("$(NODE_NAME)", "n") for a in NODE["args"]])
    autopath = cli.proxy_options(cli.config_of(parsed)).dns_autopath
    assert (("", "pods") in readable) == autopath
    assert autopath is False  # shipped off, as NodeLocal DNSCache (the file's header says why)


# The programs the proxy runs (kdns/proxy/dataplane.py, conntrack.py) → their Debian packages.
PROXY_TOOLS = {
    '"ip"': "iproute2",
    '"iptables-restore"': "iptables",
    '"nft"': "nftables",
    '"conntrack"': "conntrack",
    '"ipvsadm"': "ipvsadm",
    '"ipset"': "ipset",
}


def test_proxy_image_has_the_tools_the_proxy_runs() -> None:
    source = "".join(
        (ROOT / "kdns" / "proxy" / name).read_text() for name in ("dataplane.py", "conntrack.py")
    )
    installed = " ".join(dockerfile_stages()["proxy"]).split()
    for tool, package in PROXY_TOOLS.items():
        assert tool in source, tool  # still a program the proxy runs
        assert package in installed, package


# --- the sidecar example ----------------------------------------------------------------------


def test_sidecar_example(tmp_path: Path) -> None:
    spec = SIDECAR_POD["spec"]
    namespace = SIDECAR_POD["metadata"]["namespace"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == ["127.0.0.1"]
    assert spec["dnsConfig"]["searches"][0] == f"{namespace}.svc.cluster.local"
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= 53
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"]:
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    sidecar = next(c for c in spec["containers"] if c["name"] == "kdns")
    args = sidecar["args"]
    assert args[args.index("--dns-addr") + 1] == "127.0.0.1:53"
    # kdns's own command line accepts these arguments, and the config they make does not
    # forward to itself (the pod's resolv.conf is kdns: an explicit upstream is needed).
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    configmap = OBJ[("ConfigMap", spec["volumes"][0]["configMap"]["name"])]
    for key, text in configmap["data"].items():
        (manifests / key).write_text(text)
    local = [str(manifests) if a == "/etc/kdns/manifests" else a for a in args]
    config = cli.config_of(cli.parse_args(local))
    assert config.dns.addr == "127.0.0.1:53"
    assert config.forward.upstreams == ("10.96.0.10",)
    _, errors = load(list(config.kubernetes.manifests))
    assert errors == []
    probe = sidecar["readinessProbe"]["httpGet"]
    assert probe["port"] == parse_hostport(config.dns.ready_addr)[1] and probe["path"] == "/ready"
    assert re.fullmatch(r"0\.0\.0\.0:\d+", config.dns.ready_addr)
