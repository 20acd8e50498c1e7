"""The chart rendered by the real helm, without a cluster: lint, the values schema, and what the
values turn into (the node agent's privileges and configuration, images, optional objects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubesandbox_devenv.helm import CHART_DIR, Helm
from tests.integration.helm.conftest import DEVENV_VALUES, JsonDict, find, kinds, render


@pytest.mark.parametrize("values_file", [None, DEVENV_VALUES], ids=["defaults", "devenv"])
def test_lint_is_clean(helm: Helm, values_file: object) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator": {"replica": 2}}, ["/operator", "'replica'"]),
        ({"nodeAgnet": {"allowEmulation": True}}, ["'nodeAgnet'"]),
        ({"nodeAgent": {"allowEmulaton": True}}, ["/nodeAgent", "'allowEmulaton'"]),
        ({"gateway": {"service": {"type": "Internal"}}}, ["/gateway/service/type"]),
        ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
        ({"nodeAgent": {"stateDir": "relative/dir"}}, ["/nodeAgent/stateDir"]),
    ],
)
def test_schema_refuses_bad_values_naming_the_key(
    helm: Helm, values: JsonDict, named: list[str]
) -> None:
    result = helm.template("kubesandbox-system", values, check=False)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr
    for part in named:
        assert part in result.stderr, result.stderr


def test_defaults(helm: Helm) -> None:
    objects = render(helm)
    assert "ServiceMonitor" not in kinds(objects)
    assert "Ingress" not in kinds(objects)
    assert all(o["metadata"].get("namespace", "kubesandbox-system") == "kubesandbox-system"
               for o in objects)  # fmt: skip
    for name in ("kubesandbox-operator", "kubesandbox-gateway"):
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "ghcr.io/kubesandbox/controller:0.1.0"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert pod["serviceAccountName"] == name
    operator = find(objects, "Deployment", "kubesandbox-operator")["spec"]
    assert operator["replicas"] == 1
    assert operator["template"]["spec"]["containers"][0]["command"] == ["kubesandbox-operator"]
    service = find(objects, "Service", "kubesandbox-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert "annotations" not in service["metadata"]


def test_node_agent_daemonset(helm: Helm) -> None:
    objects = render(helm)
    daemonset = find(objects, "DaemonSet", "kubesandbox-node-agent")
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    pod = daemonset["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is True
    assert spec["nodeSelector"] == {"kubesandbox.dev/node-agent": "true"}
    assert spec["terminationGracePeriodSeconds"] == 30
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/kubesandbox/node-agent:0.1.0"
    assert container["command"] == ["kubesandbox-node-agent"]
    assert container["securityContext"]["privileged"] is True
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]
           if "valueFrom" in e}  # fmt: skip
    assert env == {"NODE_NAME": "spec.nodeName", "HOST_IP": "status.hostIP"}
    assert "--node-name=$(NODE_NAME)" in container["args"]
    assert "--host-ip=$(HOST_IP)" in container["args"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for path in ("/dev", "/var/lib/kubesandbox", "/var/cache/kubesandbox", "/run/netns",
                 "/lib/modules"):  # fmt: skip
        assert host_paths[mounts[path]["name"]] == path
    # the host's cgroup hierarchies beside the container's own (cgroupRoot)
    assert host_paths[mounts["/host/sys/fs/cgroup"]["name"]] == "/sys/fs/cgroup"
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"
    assert mounts["/lib/modules"]["readOnly"] is True
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9443"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/scheme"] == "https"
    config = yaml.safe_load(
        find(objects, "ConfigMap", "kubesandbox-node-agent")["data"]["node-agent.yaml"]
    )
    assert config == {
        "namespace": "kubesandbox-system",
        "listen": "0.0.0.0:9443",
        "tls": "auto",
        "stateDir": "/var/lib/kubesandbox",
        "cacheDir": "/var/cache/kubesandbox",
        "cgroupRoot": "/host/sys/fs/cgroup",
        "cgroupParent": "/kubesandbox",
        "network": "netns",
        "logLevel": "info",
    }  # no allowEmulation unless a value says so
    # no Secret is needed for TLS (the certificate is made on the node, pinned via the Lease)
    assert not [v for v in spec["volumes"] if "secret" in v]


def test_node_agent_values(helm: Helm) -> None:
    objects = render(
        helm,
        {
            "nodeAgent": {
                "allowEmulation": True,
                "plainHttpRegistries": ["127.0.0.1:5000"],
                "registryMirrors": {"docker.io": "127.0.0.1:5000"},
                "stateDir": "/srv/ksb/state",
                "tolerations": [{"operator": "Exists"}],
                "extraConfig": {"readyTimeout": 300},
                "tls": "off",
            }
        },
    )
    config_map = find(objects, "ConfigMap", "kubesandbox-node-agent")
    config = yaml.safe_load(config_map["data"]["node-agent.yaml"])
    assert config["allowEmulation"] is True
    assert config["plainHttpRegistries"] == ["127.0.0.1:5000"]
    assert config["registryMirrors"] == {"docker.io": "127.0.0.1:5000"}
    assert config["stateDir"] == "/srv/ksb/state"
    assert config["readyTimeout"] == 300
    assert config["tls"] == "off"
    spec = find(objects, "DaemonSet", "kubesandbox-node-agent")["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/srv/ksb/state"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "state")
    assert mount["mountPath"] == "/srv/ksb/state"  # the same path inside and outside


def test_config_change_rolls_the_daemonset_and_nothing_else_moves(helm: Helm) -> None:
    def checksum(values: JsonDict | None) -> str:
        daemonset = find(render(helm, values), "DaemonSet", "kubesandbox-node-agent")
        return str(daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(None) == checksum(None)
    assert checksum(None) != checksum({"nodeAgent": {"allowEmulation": True}})


def test_images_follow_registry_and_tag(helm: Helm) -> None:
    objects = render(helm, {"image": {"registry": "127.0.0.1:5000/kubesandbox", "tag": "dev",
                                      "pullPolicy": "Always"}})  # fmt: skip
    images = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
    }
    assert images == {
        "kubesandbox-operator": "127.0.0.1:5000/kubesandbox/controller:dev",
        "kubesandbox-gateway": "127.0.0.1:5000/kubesandbox/controller:dev",
        "kubesandbox-node-agent": "127.0.0.1:5000/kubesandbox/node-agent:dev",
    }


def test_gateway_service_ingress_and_discovery(helm: Helm) -> None:
    objects = render(
        helm,
        {
            "gateway": {
                "url": "https://sandboxes.example.com",
                "service": {"type": "NodePort", "nodePort": 30080},
                "ingress": {"enabled": True, "className": "nginx",
                            "host": "sandboxes.example.com",
                            "tls": [{"secretName": "gw-tls", "hosts": ["sandboxes.example.com"]}]},
            }
        },
    )  # fmt: skip
    service = find(objects, "Service", "kubesandbox-gateway")
    assert service["metadata"]["annotations"] == {
        "kubesandbox.dev/url": "https://sandboxes.example.com"
    }
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    ingress = find(objects, "Ingress", "kubesandbox-gateway")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["rules"][0]["host"] == "sandboxes.example.com"
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "kubesandbox-gateway", "port": {"name": "http"}}
    discovery = find(objects, "Role", "kubesandbox-gateway-discovery")
    assert discovery["rules"][0]["resourceNames"] == ["kubesandbox-gateway"]


def test_service_monitor_only_when_enabled(helm: Helm) -> None:
    values = {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "metrics": {"readers": [{"name": "prometheus", "namespace": "mon"}]},
    }
    objects = render(helm, values)
    monitor = find(objects, "ServiceMonitor", "kubesandbox-node-agent")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"]["name"] == "kubesandbox-metrics-token"
    headless = find(objects, "Service", "kubesandbox-node-agent-metrics")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == monitor["spec"]["selector"]["matchLabels"]
    binding = find(objects, "ClusterRoleBinding", "kubesandbox-metrics-reader")
    assert {(s["namespace"], s["name"]) for s in binding["subjects"]} == {
        ("mon", "prometheus"),
        ("kubesandbox-system", "kubesandbox-metrics"),
    }


def test_crds_are_the_generated_ones(helm: Helm) -> None:
    from kubesandbox_api import crdgen

    objects = render(helm, None, "--include-crds")
    crd = find(objects, "CustomResourceDefinition", "sandboxes.kubesandbox.dev")
    assert crd == crdgen.crd()


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"nodeAgent": {"allowEmulation": True, "registryMirrors": {"docker.io": "r:5000"},
                       "plainHttpRegistries": ["r:5000"], "allowedHostPaths": ["/srv"],
                       "tls": "off", "network": "none", "extraConfig": {"readyTimeout": 300}}},
    ],
    ids=["defaults", "every-value"],
)  # fmt: skip
def test_the_node_agent_accepts_its_config_and_args(
    helm: Helm, values: JsonDict | None, tmp_path: Path
) -> None:
    """The ConfigMap and the container's arguments, as the kubelet hands them over, parsed by
    the node agent's own loader (it refuses unknown keys by name)."""
    from kubesandbox_node.main import load_config

    objects = render(helm, values)
    config_file = tmp_path / "node-agent.yaml"
    config_map = find(objects, "ConfigMap", "kubesandbox-node-agent")
    config_file.write_text(config_map["data"]["node-agent.yaml"])
    daemonset = find(objects, "DaemonSet", "kubesandbox-node-agent")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    volume = next(m for m in container["volumeMounts"] if m["name"] == "config")
    expanded = [
        arg.replace("$(NODE_NAME)", "node-7")
        .replace("$(HOST_IP)", "10.1.2.3")
        .replace(f"{volume['mountPath']}/node-agent.yaml", str(config_file))
        for arg in container["args"]
    ]
    config = load_config(expanded)
    assert config.node_name == "node-7"
    assert config.namespace == "kubesandbox-system"
    assert str(config.cgroup_root) == "/host/sys/fs/cgroup"
    assert config.listen == "0.0.0.0:9443"
    if values is not None:
        assert config.allow_emulation is True
        assert config.registry_mirrors == {"docker.io": "r:5000"}
        assert config.ready_timeout == 300
    else:
        assert config.allow_emulation is False


def test_the_gateway_and_operator_accept_their_args(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubesandbox_gateway.main import parse_args as gateway_args
    from kubesandbox_operator.main import parse as operator_args
    from kubesandbox_operator.main import pod_settings
    from kubesandbox_operator.reconcile.pod import PodSettings

    sandbox_pods = {
        "pauseImage": "mirror.example/pause:3.10",
        "cpuAllocationRatio": 12.5,
        "cpuOverheadMillicores": 25,
        "memoryOverheadMiB": 1000000,  # a float in Helm: rendered as an integer all the same
    }
    values = {"logLevel": "debug", "operator": {"allowHostPaths": True}}
    objects = render(helm, {**values, "sandboxPods": sandbox_pods})
    gateway = find(objects, "Deployment", "kubesandbox-gateway")["spec"]["template"]["spec"]
    args = gateway_args(gateway["containers"][0]["args"])
    assert args.listen == ("0.0.0.0", 8080)  # noqa: S104 (the Pod's address, behind a Service)
    assert args.agents_namespace == "kubesandbox-system"
    assert args.log_level == "debug"
    operator = find(objects, "Deployment", "kubesandbox-operator")["spec"]["template"]["spec"]
    (container,) = operator["containers"]
    for variable in container["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    parsed = operator_args(container.get("args", []))
    assert parsed.namespace == "kubesandbox-system"
    assert parsed.log_level == "debug"
    assert parsed.allow_host_paths is True
    assert pod_settings(parsed) == PodSettings("mirror.example/pause:3.10", 12.5, 25, 1000000)


def test_the_devenv_values_make_a_config_the_node_agent_accepts(helm: Helm, tmp_path: Path) -> None:
    from kubesandbox_node.main import load_config

    objects = render(helm, None, "--values", str(DEVENV_VALUES))
    config_file = tmp_path / "node-agent.yaml"
    config_map = find(objects, "ConfigMap", "kubesandbox-node-agent")
    config_file.write_text(config_map["data"]["node-agent.yaml"])
    config = load_config(
        ["--config", str(config_file), "--node-name", "n", "--host-ip", "10.0.0.1"]
    )
    assert config.allow_emulation is True
    assert config.registry_mirrors == {"docker.io": "127.0.0.1:5000"}
    assert config.plain_http_registries == ["127.0.0.1:5000"]
    images = {o["spec"]["template"]["spec"]["containers"][0]["image"]
              for o in objects if o["kind"] in ("Deployment", "DaemonSet")}  # fmt: skip
    # the names kubesandbox-devenv images pushes (docs/images.md)
    assert images == {"127.0.0.1:5000/controller:dev-000000000000",
                      "127.0.0.1:5000/node-agent:dev-000000000000"}  # fmt: skip


def test_values_given_as_arguments_merge_into_a_values_file(helm: Helm) -> None:
    """What make up does: the devenv file, then the run-time parts on the command line."""
    values = {"image": {"tag": "dev-0123456789ab"},
              "nodeAgent": {"registryMirrors": {"docker.io": "127.0.0.1:41000"}}}  # fmt: skip
    objects = render(helm, values, "--values", str(DEVENV_VALUES))
    config = yaml.safe_load(
        find(objects, "ConfigMap", "kubesandbox-node-agent")["data"]["node-agent.yaml"]
    )
    assert config["allowEmulation"] is True  # from the file, kept
    assert config["registryMirrors"] == {"docker.io": "127.0.0.1:41000"}  # a dotted key, set
    operator = find(objects, "Deployment", "kubesandbox-operator")["spec"]["template"]["spec"]
    assert operator["containers"][0]["image"] == "127.0.0.1:5000/controller:dev-0123456789ab"


def test_pool_crd_is_the_generated_one(helm: Helm) -> None:
    from kubesandbox_api import crdgen

    objects = render(helm, None, "--include-crds")
    crd = find(objects, "CustomResourceDefinition", "sandboxpools.kubesandbox.dev")
    assert crd == crdgen.pool_crd()


def _grants(role: JsonDict) -> set[tuple[str, str]]:
    return {
        (resource, verb)
        for rule in role["rules"]
        if "kubesandbox.dev" in rule.get("apiGroups", [])
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_covers_sandbox_pools(helm: Helm) -> None:
    objects = render(helm)
    operator = _grants(find(objects, "ClusterRole", "kubesandbox-operator"))
    assert {
        ("sandboxpools", "watch"),
        ("sandboxpools", "patch"),
        ("sandboxpools/status", "patch"),
        ("sandboxpools/finalizers", "update"),
        ("sandboxes", "create"),
        ("sandboxes", "delete"),
    } <= operator
    edit = _grants(find(objects, "ClusterRole", "kubesandbox-edit"))
    assert {("sandboxpools", "create"), ("sandboxpools/scale", "update")} <= edit
    view = _grants(find(objects, "ClusterRole", "kubesandbox-view"))
    assert {("sandboxpools", "list"), ("sandboxpools/scale", "get")} <= view
    assert not {verb for resource, verb in view if resource.startswith("sandboxpools")} - {
        "get",
        "list",
        "watch",
    }
