import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_api import GROUP, PLURAL, VERSION
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodes import node_names
from tests.conftest import SESSION_NODES
from tests.integration.operator.fake_node_agent import FakeNodeAgent
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("installed_crds")

SYSTEM = "kubesandbox-system"


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)

    def sandbox(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        assert isinstance(found, dict)
        return found

    def create_sandbox(self, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Sandbox",
            "metadata": {"name": name},
            "spec": {"image": {"oci": "busybox:1.36"}, **spec},
        }
        created = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        assert isinstance(created, dict)
        return created

    def delete_sandbox(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def report_as_node_agent(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Sandbox",
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
            field_manager="kubesandbox-node-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def condition(self, sandbox: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
        for condition in ((sandbox or {}).get("status") or {}).get("conditions", []):
            if condition["type"] == type_:
                return dict(condition)
        return None

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_pod(namespace)
        raw = self.core.api_client.sanitize_for_serialization(listed)
        assert isinstance(raw, dict)
        return list(raw["items"])

    def events(self, namespace: str, name: str) -> list[str]:
        listed = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}"
        )
        return [str(e.reason) for e in listed.items]

    def announce(self, node: str, endpoint: str, renewed: datetime, duration: int = 3600) -> None:
        name = f"node-agent-{node}"
        annotations = {"kubesandbox.dev/endpoint": endpoint, "kubesandbox.dev/emulation": "true"}
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, annotations=annotations),
            spec=client.V1LeaseSpec(
                holder_identity=f"{node}/fake",
                lease_duration_seconds=duration,
                renew_time=renewed,
            ),
        )
        try:
            self.coordination.create_namespaced_lease(SYSTEM, body)
        except ApiException as error:
            if error.status != 409:
                raise
            # The Lease outlives a module's fake node agent: announce this one's endpoint.
            spec = {"renewTime": _micro(renewed), "leaseDurationSeconds": duration}
            patch = {"metadata": {"annotations": annotations}, "spec": spec}
            self.coordination.patch_namespaced_lease(name, SYSTEM, patch)


class OperatorProcess:
    def __init__(self, plane: ControlPlane, token_file: Path, log: Path) -> None:
        self.plane, self.token_file, self.log = plane, token_file, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "kubesandbox-operator"
        if not binary.exists():
            binary = Path(".venv/bin/kubesandbox-operator")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "--kubeconfig",
                    str(self.plane.kubeconfig),
                    "--namespace",
                    SYSTEM,
                    "--node-agent-token-file",
                    str(self.token_file),
                    "--allow-host-paths",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    with control_plane.api_client() as api:
        yield Cluster(api)


@pytest.fixture(scope="module")
def node_agent(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FakeNodeAgent]:
    try:
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SYSTEM)))
    except ApiException as error:
        if error.status != 409:
            raise
    agent = FakeNodeAgent(token=uuid.uuid4().hex)
    agent.start()
    for node in node_names(SESSION_NODES):
        cluster.announce(node, agent.endpoint, datetime.now(UTC))
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    node_agent: FakeNodeAgent,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    state = tmp_path_factory.mktemp("operator")
    token = state / "token"
    token.write_text(node_agent.token)
    process = OperatorProcess(control_plane, token, state / "operator.log")
    process.start()
    yield process
    process.stop()
    print(process.log.read_text()[-4000:])


@pytest.fixture
def namespace(cluster: Cluster, operator: OperatorProcess) -> Iterator[str]:
    """A fresh namespace; its sandboxes are deleted afterwards so that their Pods give their
    node capacity back (the registered nodes are finite, as real ones are)."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)
    assert isinstance(listed, dict)
    for item in listed["items"]:
        cluster.delete_sandbox(name, item["metadata"]["name"])
    eventually(lambda: not cluster.pods(name), 120, f"the Pods of {name} to go")
    cluster.core.delete_namespace(name)


def _scheduled(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    sandbox = cluster.sandbox(namespace, name)
    condition = cluster.condition(sandbox, "Scheduled")
    return sandbox if condition and condition["status"] == "True" else None


def test_apply_schedules_through_a_pod_and_hands_over_to_the_node_agent(
    cluster: Cluster, node_agent: FakeNodeAgent, operator: OperatorProcess, namespace: str
) -> None:
    uid = cluster.create_sandbox(namespace, "hello", cpus=2, memory="1Gi")["metadata"]["uid"]
    sandbox = eventually(lambda: _scheduled(cluster, namespace, "hello"), what="Scheduled=True")
    status = sandbox["status"]
    assert status["phase"] == "Scheduled"
    assert status["nodeName"] in node_names(SESSION_NODES)
    assert "kubesandbox.dev/finalizer" in sandbox["metadata"]["finalizers"]
    (pod,) = cluster.pods(namespace)
    assert pod["metadata"]["name"] == status["podName"] == "hello-sandbox"
    assert pod["spec"]["nodeName"] == status["nodeName"]  # bound by the real kube-scheduler
    assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
    requests = pod["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {"cpu": "2100m", "memory": "1280Mi"}
    put = eventually(lambda: node_agent.puts(uid), what="the desired state at the node agent")[0]
    assert put.body is not None
    assert put.body["spec"]["cpus"] == 2
    assert put.body["namespace"] == namespace
    assert "PodBound" in eventually(lambda: cluster.events(namespace, "hello"), what="events")


def test_ready_follows_the_node_agents_report_without_clobbering(
    cluster: Cluster, operator: OperatorProcess, node_agent: FakeNodeAgent, namespace: str
) -> None:
    cluster.create_sandbox(namespace, "ready")
    eventually(lambda: _scheduled(cluster, namespace, "ready"), what="Scheduled=True")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.report_as_node_agent(
        namespace,
        "ready",
        {
            "phase": "Running",
            "conditions": [
                {
                    "type": "AgentConnected",
                    "status": "True",
                    "reason": "AgentReady",
                    "message": "",
                    "lastTransitionTime": now,
                }
            ],
        },
    )

    def ready() -> dict[str, Any] | None:
        sandbox = cluster.sandbox(namespace, "ready")
        condition = cluster.condition(sandbox, "Ready")
        return sandbox if condition and condition["status"] == "True" else None

    sandbox = eventually(ready, what="Ready=True")
    assert sandbox["status"]["phase"] == "Running"
    assert {c["type"] for c in sandbox["status"]["conditions"]} >= {
        "Scheduled",
        "Ready",
        "AgentConnected",
    }


def test_a_missing_secret_fails_with_a_reason_and_recovers_when_created(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_sandbox(
        namespace,
        "needs-secret",
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}],
    )

    def failed() -> dict[str, Any] | None:
        condition = cluster.condition(cluster.sandbox(namespace, "needs-secret"), "Ready")
        return condition if condition and condition["reason"] == "SecretNotFound" else None

    condition = eventually(failed, what="Ready=False SecretNotFound")
    assert "spec.env[0].valueFrom: Secret 'later' does not exist" in condition["message"]
    assert cluster.sandbox(namespace, "needs-secret")["status"]["phase"] == "Failed"  # type: ignore[index]
    assert cluster.pods(namespace) == []
    assert "SecretNotFound" in eventually(lambda: cluster.events(namespace, "needs-secret"))
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="later"), string_data={"t": "x"}),
    )
    eventually(lambda: _scheduled(cluster, namespace, "needs-secret"), 90, "recovery")


def test_delete_waits_for_the_node_agent_then_removes_the_finalizer(
    cluster: Cluster, operator: OperatorProcess, node_agent: FakeNodeAgent, namespace: str
) -> None:
    uid = cluster.create_sandbox(namespace, "doomed")["metadata"]["uid"]
    eventually(lambda: _scheduled(cluster, namespace, "doomed"), what="Scheduled=True")
    cluster.delete_sandbox(namespace, "doomed")
    eventually(lambda: cluster.sandbox(namespace, "doomed") is None, what="the object to go")
    assert len(node_agent.deletes(uid)) >= 2  # 202 (in progress), then 204 (gone)


def test_a_lost_node_crashes_its_sandboxes(
    cluster: Cluster, operator: OperatorProcess, node_agent: FakeNodeAgent, namespace: str
) -> None:
    cluster.create_sandbox(namespace, "stranded")
    sandbox = eventually(lambda: _scheduled(cluster, namespace, "stranded"), what="Scheduled")
    node = sandbox["status"]["nodeName"]
    cluster.report_as_node_agent(namespace, "stranded", {"phase": "Running"})
    try:
        cluster.announce(node, node_agent.endpoint, datetime.now(UTC) - timedelta(hours=2), 60)

        def crashed() -> dict[str, Any] | None:
            found = cluster.sandbox(namespace, "stranded")
            return found if (found or {}).get("status", {}).get("phase") == "Crashed" else None

        crashed_sandbox = eventually(crashed, what="phase Crashed")
        scheduled = cluster.condition(crashed_sandbox, "Scheduled")
        assert scheduled is not None
        assert scheduled["reason"] == "NodeLost"
        # Events are posted in the background, after the status write they announce.
        eventually(lambda: "NodeLost" in cluster.events(namespace, "stranded"), what="NodeLost")
    finally:
        cluster.announce(node, node_agent.endpoint, datetime.now(UTC))


def test_sigkill_while_creating_ten_loses_nothing_and_duplicates_nothing(
    cluster: Cluster, operator: OperatorProcess, node_agent: FakeNodeAgent, namespace: str
) -> None:
    names = [f"burst-{i}" for i in range(10)]
    for name in names:
        cluster.create_sandbox(namespace, name)
    eventually(lambda: len(cluster.pods(namespace)) >= 3, what="a few Pods")
    operator.kill()
    operator.start()
    for name in names:
        eventually(partial(_scheduled, cluster, namespace, name), 120, name)
    pods = cluster.pods(namespace)
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"{n}-sandbox" for n in names)


def test_sigterm_exits_zero_and_hands_the_lease_over(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """What the kubelet does on a rolling update: SIGTERM. The operator stops cleanly (exit 0,
    not a container in Error) and releases its Lease, so a standby takes over at once instead
    of after the lease duration. Last in the module: it stops the module's operator."""
    assert operator.process is not None
    assert operator.process.poll() is None
    # Leading and running (Kopf's signal handlers are in place once it watches).
    eventually(lambda: "controller.synced" in operator.log.read_text(), 60, "controller.synced")
    operator.process.terminate()
    assert operator.process.wait(30) == 0, operator.log.read_text()[-3000:]
    lease = cluster.coordination.read_namespaced_lease("kubesandbox-operator", SYSTEM)
    assert lease.spec is not None
    assert lease.spec.holder_identity is None
