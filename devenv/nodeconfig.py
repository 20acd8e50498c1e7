"""The configuration files of the devenv's real node, rendered from its layout (pure functions).

``realnode`` writes these before each start; each function says why its settings are what they
are (ENVIRONMENT.md, "A real kubelet node", has the measurements behind them):

* containerd: its own root, state, socket and plugin dirs under the node's directory, so it
  shares nothing with a system containerd; ``SystemdCgroup = false`` (PID 1 is not systemd);
  ``restrict_oom_score_adj = true`` (sessions here lack CAP_SYS_RESOURCE, and without it every
  sandbox fails in runc); network namespaces under its state dir, not ``/run/netns``; the pause
  image named explicitly; registries through a ``config_path`` hosts directory
  (``registry_hosts``).
* kubelet: cgroup v1 allowed (``failCgroupV1: false``), the ``cgroupfs`` driver, swap and kernel
  defaults not enforced, x509 + webhook authentication and webhook authorization (the
  apiserver's kubelet client is bound to ``system:kubelet-api-admin``), a serving certificate
  from our CA, loopback health port, low eviction thresholds and no image GC (a shared disk must
  not turn the node DiskPressure-tainted, and the pause image cannot be pulled back).
* kube-proxy: iptables mode, and nothing that changes host sysctls (``localhostNodePorts:
  false``, conntrack limits and timeouts left as they are).
* CNI: one bridge ``cni0`` (gateway, masquerade, hairpin) with host-local addresses from
  ``POD_SUBNET`` (its allocations under the node's directory), and portmap for hostPorts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kubesandbox_devenv.pause import PAUSE_IMAGE

NODE_NAME = "kubesandbox-node-0"
"""Fixed, like the kubelet-less Nodes' names: the machine's hostname here is ``vm`` and does
not resolve, and a fixed name lets the node agent's configuration name the node up front."""
NODE_AGENT_LABEL = "kubesandbox.dev/node-agent"
CLUSTER_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
CNI_NETWORK = "kubesandbox"
CNI_BRIDGE = "cni0"
CNI_BIN_DIR = Path("/usr/lib/cni")
"""Where Debian's containernetworking-plugins installs the plugins."""
CLUSTER_DOMAIN = "cluster.local"
DOCKER_HUB_HOSTS = "docker.io"
DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"


@dataclass(frozen=True)
class NodeLayout:
    """Everything of the real node under ``<state>/node/``."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def registry_hosts(self) -> Path:
        """containerd's ``config_path``: ``<host[:port]>/hosts.toml`` per registry."""
        return self.root / "containerd" / "certs.d"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_cert_dir(self) -> Path:
        return self.root / "kubelet-pki"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.root / "kube-proxy.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.root / "volume-plugins"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def sysctls(self) -> Path:
        """The kernel settings as they were before the kubelet first ran (restored on stop)."""
        return self.root / "sysctls.json"


@dataclass(frozen=True)
class NodePorts:
    """The node's machine-wide ports, picked free once and kept with the node's state."""

    kubelet: int
    kubelet_healthz: int
    kube_proxy_healthz: int
    kube_proxy_metrics: int

    @classmethod
    def load(cls, path: Path) -> NodePorts | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, TypeError, ValueError):
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def containerd_config(layout: NodeLayout, runc: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_toml_string(str(layout.containerd_root))}",
        f"state = {_toml_string(str(layout.containerd_state))}",
        "",
        "[grpc]",
        f"  address = {_toml_string(str(layout.containerd_socket))}",
        "",
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_toml_string(str(layout.root / 'containerd' / 'opt'))}",
        "",
        f"[{cri}]",
        f"  sandbox_image = {_toml_string(PAUSE_IMAGE)}",
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"  BinaryName = {_toml_string(str(runc))}",
        f"[{cri}.cni]",
        f"  bin_dir = {_toml_string(str(CNI_BIN_DIR))}",
        f"  conf_dir = {_toml_string(str(layout.cni_conf_dir))}",
        "  max_conf_num = 1",
        f"[{cri}.registry]",
        f"  config_path = {_toml_string(str(layout.registry_hosts))}",
    ]
    return "\n".join(lines) + "\n"


def registry_hosts(host: str) -> str:
    """``hosts.toml`` for ``host`` (``127.0.0.1:<port>``): plain HTTP, no TLS at all."""
    return f"server = {_toml_string('http://' + host)}\n"


def docker_hub_mirror_hosts(mirror: str) -> str:
    """``hosts.toml`` for ``docker.io``: ask the plain-HTTP ``mirror`` first. Docker Hub stays
    the fallback (unreachable here, so a missing image fails with the mirror's answer first)."""
    return (
        f"server = {_toml_string(DOCKER_HUB_UPSTREAM)}\n\n"
        f"[host.{_toml_string('http://' + mirror)}]\n"
        '  capabilities = ["pull", "resolve"]\n'
    )


def cni_conflist(layout: NodeLayout) -> str:
    config = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_ipam),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def kubelet_config(
    layout: NodeLayout,
    *,
    node_ip: str,
    ports: NodePorts,
    client_ca: Path,
    serving_cert: Path,
    serving_key: Path,
) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": node_ip,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.volume_plugins),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "maxPods": 110,
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(layout: NodeLayout, *, ports: NodePorts) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clientConnection": {"kubeconfig": str(layout.kube_proxy_kubeconfig)},
        "healthzBindAddress": f"127.0.0.1:{ports.kube_proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.kube_proxy_metrics}",
        "clusterCIDR": CLUSTER_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": ["primary"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
    }
    return yaml.safe_dump(config, sort_keys=False)
