"""The chart on the real control plane: the apiserver accepts every rendered object (server-side
dry run), ``helm install`` then ``helm upgrade`` with the same values changes nothing,
``helm uninstall`` leaves nothing of the release but the CRD, the components' RBAC is what
docs/security.md says, and the ValidatingAdmissionPolicy confines a node agent to its own node.

The policy test uses hand-made objects: a Pod of the node agent's ServiceAccount bound to
``kubesandbox-node-0`` (the fake Nodes have no kubelet, so it never runs) and a TokenRequest
bound to that Pod, which carries the node-name claim, exactly as the kubelet's projected token
of a real node agent Pod does."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.helm import CHART_DIR, RELEASE, Helm, values_args
from kubesandbox_devenv.nodes import node_names
from tests.integration.helm.conftest import DEVENV_VALUES, SYSTEM, JsonDict, documents
from tests.integration.operator.fake_node_agent import FakeNodeAgent
from tests.support.waiting import eventually

pytestmark = pytest.mark.controlplane

NODE_AGENT = f"system:serviceaccount:{SYSTEM}:kubesandbox-node-agent"
OPERATOR = f"system:serviceaccount:{SYSTEM}:kubesandbox-operator"
SANDBOXES = "sandboxes.kubesandbox.dev"
POOLS = "sandboxpools.kubesandbox.dev"
WAIT = ("--wait", "--timeout", "120s")
NO_HOOK = ("--no-hooks",)
"""The pre-delete hook's Job cannot run without a kubelet; test_uninstall_hook_script runs its
script on this host instead, with the hook's ServiceAccount."""
INSTALL_VALUES: JsonDict = {
    # No kubelet runs on the fake Nodes (labelled for node agents): Pods would be bound and
    # never start, nor go away when deleted.
    "operator": {"replicas": 0},
    "gateway": {"replicas": 0},
    "nodeAgent": {"nodeSelector": {"kubesandbox.dev/helm-test": "no-such-node"}},
}


@pytest.fixture(scope="module")
def cluster_helm(
    control_plane: ControlPlane, installed_crds: list[Path], helm_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Helm:  # fmt: skip
    services.SystemNamespace(control_plane).start()
    home = tmp_path_factory.mktemp("helm-home")
    return Helm(helm_binary, home=home, kubeconfig=Path(control_plane.kubeconfig))


def install_args(values: JsonDict) -> list[str]:
    return [RELEASE, str(CHART_DIR), "--namespace", SYSTEM, *values_args(values)]


@pytest.fixture(scope="module")
def release(cluster_helm: Helm, control_plane: ControlPlane) -> Iterator[str]:
    """The chart installed in kubesandbox-system; uninstalled afterwards. ``--take-ownership``:
    other tests of the session may have applied the chart's RBAC with kubectl already."""
    cluster_helm.run("install", *install_args(INSTALL_VALUES), "--take-ownership", *WAIT)
    yield RELEASE
    cluster_helm.run("uninstall", RELEASE, "--namespace", SYSTEM, *NO_HOOK, check=False)


def manifest_objects(helm: Helm) -> list[JsonDict]:
    return documents(helm.run("get", "manifest", RELEASE, "--namespace", SYSTEM).stdout)


def live(plane: ControlPlane, obj: JsonDict) -> JsonDict | None:
    group = obj["apiVersion"].rpartition("/")[0]
    kind = f"{obj['kind']}.{group}" if group else obj["kind"]
    args = ["get", kind, obj["metadata"]["name"], "-o", "json"]
    namespace = obj["metadata"].get("namespace")
    if namespace:
        args += ["-n", namespace]
    result = plane.kubectl(*args, check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    found: JsonDict = json.loads(result.stdout)
    return found


def versions(plane: ControlPlane, objects: list[JsonDict]) -> dict[str, tuple[str, int | None]]:
    """resourceVersion and generation of every object, by kind/namespace/name."""
    found = {}
    for obj in objects:
        current = live(plane, obj)
        assert current is not None, f"{obj['kind']}/{obj['metadata']['name']} is missing"
        meta = current["metadata"]
        key = f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"
        found[key] = (meta["resourceVersion"], meta.get("generation"))
    return found


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"gateway": {"ingress": {"enabled": True, "host": "sandboxes.example.com"},
                     "service": {"type": "NodePort"}, "url": "http://sandboxes.example.com"},
         "metrics": {"readers": [{"name": "prometheus", "namespace": "monitoring"}]}},
    ],
    ids=["defaults", "everything-but-servicemonitor"],
)  # fmt: skip
def test_server_side_dry_run_accepts_every_object(
    cluster_helm: Helm, control_plane: ControlPlane, values: JsonDict
) -> None:
    rendered = cluster_helm.template(SYSTEM, values, extra=["--include-crds"]).stdout
    for values_file in ([], ["--values", str(DEVENV_VALUES)]):
        if values_file:
            rendered += "\n---\n" + cluster_helm.template(SYSTEM, None, extra=values_file).stdout
        result = control_plane.kubectl(
            "apply", "--dry-run=server", "-f", "-", "-o", "name", input_text=rendered
        )
        applied = result.stdout.split()
        assert len(applied) >= len(documents(rendered)) - 1, result.stdout  # CRD may be equal
        assert any(a.startswith("validatingadmissionpolicy") for a in applied)
        assert any(a.startswith("daemonset") for a in applied)


def test_second_upgrade_with_the_same_values_changes_nothing(
    release: str, cluster_helm: Helm, control_plane: ControlPlane
) -> None:
    objects = manifest_objects(cluster_helm)
    assert len(objects) >= 25
    cluster_helm.run("upgrade", *install_args(INSTALL_VALUES), *WAIT)  # revision 2
    # Controllers finish their status writes first (DaemonSet, Deployments): compare once two
    # readings agree, then upgrade again.
    before = eventually(
        lambda: (lambda a, b: a if a == b else None)(
            versions(control_plane, objects), versions(control_plane, objects)
        ),
        what="the release's objects to settle",
    )
    cluster_helm.run("upgrade", *install_args(INSTALL_VALUES), *WAIT)
    after = versions(control_plane, objects)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"a no-op upgrade wrote {changed}"
    status = json.loads(cluster_helm.run("status", RELEASE, "-n", SYSTEM, "-o", "json").stdout)
    assert status["version"] == 3
    assert status["info"]["status"] == "deployed"


def test_the_policy_type_checks_without_warnings(release: str, control_plane: ControlPlane) -> None:
    """The apiserver type-checks every CEL expression against the matched kinds (Sandbox from
    its CRD schema, Lease, Event): a misspelt field would be a warning here."""

    def checked() -> JsonDict | None:
        policy = "validatingadmissionpolicy/kubesandbox-node-agent"
        found = json.loads(control_plane.kubectl("get", policy, "-o", "json").stdout)
        status: JsonDict = found.get("status", {})
        generation = found["metadata"]["generation"]
        return status if status.get("observedGeneration") == generation else None

    status = eventually(checked, what="the policy's type check")
    assert not status.get("typeChecking", {}).get("expressionWarnings"), status


def test_notes_say_how_to_reach_the_gateway_and_use_the_sdk(
    release: str, cluster_helm: Helm
) -> None:
    notes = cluster_helm.run("get", "notes", RELEASE, "-n", SYSTEM).stdout
    # INSTALL_VALUES' nodeSelector, merged by Helm with the default
    labels = "kubesandbox.dev/helm-test=no-such-node kubesandbox.dev/node-agent=true"
    assert f"kubectl label node <node> {labels}\n" in notes
    assert "kubectl -n kubesandbox-system port-forward service/kubesandbox-gateway 8080:80" in notes
    assert "http://kubesandbox-gateway.kubesandbox-system.svc:80" in notes
    assert "export MSB_BACKEND=cloud" in notes
    assert "export MSB_API_URL=<gateway URL>/ns/<namespace>" in notes
    assert "export MSB_API_KEY=$TOKEN" in notes


def can_i(plane: ControlPlane, who: str, verb: str, resource: str, namespace: str = "") -> bool:
    args = ["auth", "can-i", verb, f"--as={who}"]
    plural, _, subresource = resource.partition("/")  # kubectl reads TYPE/NAME otherwise
    if subresource and plural in (SANDBOXES, POOLS):
        args += [plural, f"--subresource={subresource}"]
    else:
        args.append(resource)
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    answer = plane.kubectl(*args, check=False).stdout.strip()
    assert answer in ("yes", "no"), answer
    return answer == "yes"


def test_operator_rbac_is_least_privilege(release: str, control_plane: ControlPlane) -> None:
    allowed = [
        *(
            (v, SANDBOXES, "team")
            for v in ("get", "list", "watch", "create", "update", "patch", "delete")
        ),
        ("patch", f"{SANDBOXES}/status", "team"),
        ("update", f"{SANDBOXES}/finalizers", "team"),
        *((v, POOLS, "team") for v in ("get", "list", "watch", "update", "patch")),
        ("patch", f"{POOLS}/status", "team"),
        ("update", f"{POOLS}/finalizers", "team"),
        *((v, "pods", "") for v in ("get", "list", "watch", "create", "delete")),
        *((v, kind, "") for v in ("get", "list", "watch") for kind in ("secrets", "configmaps")),
        ("create", "events", "team"),
        *((v, "leases.coordination.k8s.io", SYSTEM) for v in ("get", "list", "watch", "create")),
        ("update", "leases.coordination.k8s.io/kubesandbox-operator", SYSTEM),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ]
    denied = [
        ("create", POOLS, "team"),
        ("delete", POOLS, "team"),
        ("update", f"{POOLS}/scale", "team"),
        ("update", f"{SANDBOXES}/status", "team"),
        ("update", "pods", "team"),
        ("create", "secrets", "team"),
        ("update", "configmaps", "team"),
        ("update", "leases.coordination.k8s.io/node-agent-kubesandbox-node-0", SYSTEM),
        ("delete", "leases.coordination.k8s.io/kubesandbox-operator", SYSTEM),
        ("get", "leases.coordination.k8s.io", "team"),
        ("create", f"{SANDBOXES}/exec", "team"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ]
    for verb, resource, namespace in allowed:
        assert can_i(control_plane, OPERATOR, verb, resource, namespace), (verb, resource)
    for verb, resource, namespace in denied:
        assert not can_i(control_plane, OPERATOR, verb, resource, namespace), (verb, resource)


def test_node_agent_rbac_is_least_privilege(release: str, control_plane: ControlPlane) -> None:
    allowed = [
        ("create", "tokenreviews.authentication.k8s.io", ""),
        ("create", "subjectaccessreviews.authorization.k8s.io", ""),
        ("patch", f"{SANDBOXES}/status", "team"),
        ("create", "events", "team"),
        ("create", "leases.coordination.k8s.io", SYSTEM),
        ("patch", "leases.coordination.k8s.io", SYSTEM),
    ]
    denied = [
        *((v, SANDBOXES, "team") for v in ("get", "list", "update", "patch", "delete")),
        ("update", f"{SANDBOXES}/status", "team"),
        ("get", "secrets", "team"),
        ("get", "pods", "team"),
        ("patch", "leases.coordination.k8s.io", "team"),
        ("delete", "leases.coordination.k8s.io", SYSTEM),
        ("create", "events.events.k8s.io", "team"),
    ]
    for verb, resource, namespace in allowed:
        assert can_i(control_plane, NODE_AGENT, verb, resource, namespace), (verb, resource)
    for verb, resource, namespace in denied:
        assert not can_i(control_plane, NODE_AGENT, verb, resource, namespace), (verb, resource)


class Identity:
    """Raw API calls with one bearer token, as the node agent's client makes them."""

    def __init__(self, plane: ControlPlane, token: str) -> None:
        self.server = plane.server
        self.context = ssl.create_default_context(cafile=str(plane.ca))
        self.token = token

    def call(
        self, method: str, path: str, body: JsonDict | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, JsonDict]:  # fmt: skip
        request = urllib.request.Request(  # noqa: S310 (https to the test apiserver)
            self.server + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 (https to the test apiserver)
                request, context=self.context, timeout=30
            ) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def whoami(self) -> JsonDict:
        status, review = self.call(
            "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )  # fmt: skip
        assert status == 201, review
        user: JsonDict = review["status"]["userInfo"]
        return user

    def apply(self, path: str, body: JsonDict) -> tuple[int, JsonDict]:
        """Server-side apply as the node agent's field manager (status/writer.py, lease.py)."""
        query = "?fieldManager=kubesandbox-node-agent&force=true"
        return self.call("PATCH", path + query, body, "application/apply-patch+yaml")

    def write_status(self, namespace: str, name: str, uid: str) -> tuple[int, JsonDict]:
        return self.apply(
            f"/apis/kubesandbox.dev/v1alpha1/namespaces/{namespace}/sandboxes/{name}/status",
            {
                "apiVersion": "kubesandbox.dev/v1alpha1",
                "kind": "Sandbox",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "status": {"phase": "Running"},
            },
        )

    def renew_lease(self, node: str) -> tuple[int, JsonDict]:
        name = f"node-agent-{node}"
        return self.apply(
            f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/{name}",
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": SYSTEM,
                             "labels": {"kubesandbox.dev/node": node}},
                "spec": {"holderIdentity": f"{node}/test", "leaseDurationSeconds": 40},
            },
        )  # fmt: skip

    def post_event(self, namespace: str, sandbox: str, uid: str, node: str) -> tuple[int, JsonDict]:
        return self.call(
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{sandbox}.", "namespace": namespace},
                "involvedObject": {"apiVersion": "kubesandbox.dev/v1alpha1", "kind": "Sandbox",
                                   "name": sandbox, "namespace": namespace, "uid": uid},
                "type": "Normal", "reason": "Started", "message": "sandbox is Running",
                "source": {"component": "kubesandbox-node-agent", "host": node},
                "reportingComponent": "kubesandbox-node-agent", "reportingInstance": node,
            },
        )  # fmt: skip


@pytest.fixture(scope="module")
def agent_pod(release: str, control_plane: ControlPlane) -> Iterator[str]:
    """A Pod of the node agent's ServiceAccount bound to node 0 (never runs: no kubelet)."""
    name = f"node-agent-probe-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": SYSTEM},
        "spec": {
            "nodeName": node_names(2)[0],
            "serviceAccountName": "kubesandbox-node-agent",
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "ghcr.io/kubesandbox/node-agent:0.1.0"}],
        },
    }
    control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    yield name
    control_plane.kubectl(
        "delete", "pod", name, "-n", SYSTEM, "--grace-period=0", "--force", check=False
    )


def token(plane: ControlPlane, *bound: str) -> str:
    created = plane.kubectl(
        "create", "token", "kubesandbox-node-agent", "-n", SYSTEM, "--duration=1h", *bound
    )
    return created.stdout.strip()


@pytest.fixture
def sandboxes(release: str, control_plane: ControlPlane) -> Iterator[tuple[str, dict[str, str]]]:
    """A namespace with one Sandbox per node, status.nodeName set as the operator would; gone
    before the next test (an operator started later would otherwise adopt them)."""
    namespace = f"vap-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    uids = {}
    for index, node in enumerate(node_names(2)):
        name = f"box-{index}"
        sandbox = {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"image": {"oci": "busybox:1.36"}},
        }
        created = control_plane.kubectl(
            "create", "-f", "-", "-o", "json", input_text=json.dumps(sandbox)
        )
        uids[name] = json.loads(created.stdout)["metadata"]["uid"]
        status = {"status": {"phase": "Scheduled", "nodeName": node}}
        control_plane.kubectl(
            "patch", SANDBOXES, name, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps(status), "--field-manager=kubesandbox-operator",
        )  # fmt: skip
    yield namespace, uids
    control_plane.kubectl("delete", "namespace", namespace, "--timeout=120s")


def refused(answer: tuple[int, JsonDict], *message: str) -> None:
    status, body = answer
    assert status == 403, body
    for part in message:
        assert part in body.get("message", ""), body


def test_a_node_agent_writes_only_its_own_nodes_sandboxes_lease_and_events(
    control_plane: ControlPlane, agent_pod: str, sandboxes: tuple[str, dict[str, str]]
) -> None:
    namespace, uids = sandboxes
    node0, node1 = node_names(2)
    agent = Identity(control_plane, token(control_plane, "--bound-object-kind=Pod",
                                          f"--bound-object-name={agent_pod}"))  # fmt: skip
    user = agent.whoami()
    assert user["username"] == NODE_AGENT
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [node0]

    # its own node's Sandbox: allowed (policies are loaded asynchronously after the install)
    def written() -> JsonDict | None:
        status, body = agent.write_status(namespace, "box-0", uids["box-0"])
        return body if status == 200 else None

    body = eventually(written, what="the node agent's write of its own Sandbox")
    assert body["status"]["phase"] == "Running"
    assert body["status"]["nodeName"] == node0

    # another node's Sandbox: refused by the policy, with its message
    refused(
        agent.write_status(namespace, "box-1", uids["box-1"]),
        "ValidatingAdmissionPolicy 'kubesandbox-node-agent'",
        f"the node agent of node {node0} may only write the status of Sandboxes bound to "
        f"that node; {namespace}/box-1 is bound to node {node1}",
    )
    after = json.loads(control_plane.kubectl(
        "get", SANDBOXES, "box-1", "-n", namespace, "-o", "json").stdout)  # fmt: skip
    assert after["status"]["phase"] == "Scheduled"

    # its own Lease: allowed; another node's: refused
    status, lease = agent.renew_lease(node0)
    assert status in (200, 201), lease
    refused(
        agent.renew_lease(node1),
        f"may only write its own Lease node-agent-{node0}, not node-agent-{node1}",
    )

    # Events: about a Sandbox, reported as its own node; not as another node
    status, event = agent.post_event(namespace, "box-0", uids["box-0"], node0)
    assert status == 201, event
    refused(
        agent.post_event(namespace, "box-1", uids["box-1"], node1),
        f"the node agent of node {node0} may only post Events about Sandboxes, reported by "
        "that node",
    )


def test_a_token_without_the_node_claim_is_refused(
    control_plane: ControlPlane, agent_pod: str, sandboxes: tuple[str, dict[str, str]]
) -> None:
    namespace, uids = sandboxes
    unbound = Identity(control_plane, token(control_plane))
    user = unbound.whoami()
    assert user["username"] == NODE_AGENT
    assert "authentication.kubernetes.io/node-name" not in user.get("extra", {})
    message = (
        "the kubesandbox node agent must use a token bound to its Pod on a node (the token "
        "has no authentication.kubernetes.io/node-name claim)"
    )
    eventually(
        lambda: unbound.write_status(namespace, "box-0", uids["box-0"])[0] == 403,
        what="the policy to refuse",
    )
    refused(unbound.write_status(namespace, "box-0", uids["box-0"]), message)
    refused(unbound.renew_lease(node_names(2)[0]), message)


def announce(plane: ControlPlane, node: str, endpoint: str) -> None:
    """A node agent's Lease as the fake node agent would renew it (written as admin)."""
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"node-agent-{node}", "namespace": SYSTEM,
                     "annotations": {"kubesandbox.dev/endpoint": endpoint,
                                     "kubesandbox.dev/emulation": "true"}},
        "spec": {"holderIdentity": f"{node}/fake", "leaseDurationSeconds": 3600,
                 "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    }  # fmt: skip
    plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=test",
                  "-f", "-", input_text=json.dumps(lease))  # fmt: skip


def test_the_operator_works_with_only_its_chart_rbac(
    release: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The real operator process with the token of its ServiceAccount (what its Pod mounts):
    a Sandbox is scheduled, handed to a (fake) node agent and deleted, and nothing it does is
    forbidden. Catches a rule the ClusterRole lacks, which can-i checks alone would not."""
    created = control_plane.kubectl(
        "create", "token", "kubesandbox-operator", "-n", SYSTEM, "--duration=1h"
    )
    kubeconfig = services.write_kubeconfig(
        control_plane, tmp_path / "operator.kubeconfig", created.stdout.strip(), SYSTEM
    )
    agent = FakeNodeAgent(token=uuid.uuid4().hex)
    agent.start()
    token_file = tmp_path / "agent-token"
    token_file.write_text(agent.token)
    for node in node_names(2):
        announce(control_plane, node, agent.endpoint)
    namespace = f"op-rbac-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    log = tmp_path / "operator.log"
    binary = Path(sys.executable).with_name("kubesandbox-operator")
    with log.open("wb") as out:
        operator = subprocess.Popen(
            [str(binary), "--kubeconfig", str(kubeconfig), "--namespace", SYSTEM,
             "--node-agent-token-file", str(token_file)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        sandbox = {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "rbac", "namespace": namespace},
            "spec": {"image": {"oci": "busybox:1.36"}},
        }
        made = control_plane.kubectl(
            "create", "-f", "-", "-o", "json", input_text=json.dumps(sandbox)
        )
        uid = json.loads(made.stdout)["metadata"]["uid"]
        eventually(
            lambda: agent.puts(uid), 120, lambda: f"the node agent's PUT; {log.read_text()[-2000:]}"
        )
        current = json.loads(control_plane.kubectl(
            "get", SANDBOXES, "rbac", "-n", namespace, "-o", "json").stdout)  # fmt: skip
        assert current["status"]["nodeName"] in node_names(2)
        assert control_plane.kubectl("get", "pod", "rbac-sandbox", "-n", namespace).returncode == 0
        control_plane.kubectl("delete", SANDBOXES, "rbac", "-n", namespace, "--wait=false")
        eventually(
            lambda: (
                control_plane.kubectl(
                    "get", SANDBOXES, "rbac", "-n", namespace, check=False
                ).returncode
                != 0
            ),
            120,
            lambda: f"the Sandbox to go; {log.read_text()[-2000:]}",
        )
    finally:
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)
        agent.stop()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    output = log.read_text()
    for sign in ("forbidden", "Forbidden", "Not enough permissions"):
        assert sign not in output, output[-4000:]


def hook_script(helm: Helm, plane: ControlPlane) -> str:
    """The hook's ServiceAccount and RBAC applied (Helm would create them before the Job), and
    the Job's script returned."""
    hook = documents(helm.template(SYSTEM, show_only=["templates/uninstall-hook.yaml"]).stdout)
    jobs = [o for o in hook if o["kind"] == "Job"]
    rbac = [o for o in hook if o["kind"] != "Job"]
    plane.kubectl("apply", "-f", "-", input_text=json.dumps({"kind": "List", "apiVersion": "v1",
                                                             "items": rbac}))  # fmt: skip
    (job,) = jobs
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python3", "-c"]
    return str(command[2])


def run_hook(
    plane: ControlPlane, script: str, tmp_path: Path, timeout: int
) -> subprocess.CompletedProcess[str]:
    token = plane.kubectl("create", "token", "kubesandbox-uninstall", "-n", SYSTEM).stdout
    (tmp_path / "token").write_text(token.strip())
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KUBESANDBOX_API": plane.server,
        "KUBESANDBOX_TOKEN_FILE": str(tmp_path / "token"),
        "KUBESANDBOX_CA_FILE": str(plane.ca),
        "KUBESANDBOX_TIMEOUT": str(timeout),
    }
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=timeout + 60, check=False,
    )  # fmt: skip


def test_uninstall_hook_deletes_every_sandbox_and_waits(
    cluster_helm: Helm, control_plane: ControlPlane, release: str, tmp_path: Path
) -> None:
    """The pre-delete hook's script, with the hook's own RBAC: every Sandbox is deleted and
    awaited; one that cannot go (a finalizer nobody removes: no operator) fails the hook after
    its timeout, naming it."""
    script = hook_script(cluster_helm, control_plane)
    namespace = f"hook-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", namespace)
    for name, finalizers in (("plain", []), ("stuck", ["kubesandbox.dev/test-finalizer"])):
        sandbox = {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers},
            "spec": {"image": {"oci": "busybox:1.36"}},
        }
        control_plane.kubectl("create", "-f", "-", input_text=json.dumps(sandbox))
    pool = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "warm", "namespace": namespace},
        "spec": {"template": {"spec": {"image": {"oci": "busybox:1.36"}}}},
    }
    control_plane.kubectl("create", "-f", "-", input_text=json.dumps(pool))

    stuck = run_hook(control_plane, script, tmp_path, timeout=6)
    assert stuck.returncode == 1, stuck.stdout + stuck.stderr
    assert f"deleting SandboxPool {namespace}/warm" in stuck.stdout
    assert f"deleting Sandbox {namespace}/plain" in stuck.stdout
    assert f"Sandboxes are still there: {namespace}/stuck" in stuck.stderr
    assert control_plane.kubectl("get", SANDBOXES, "plain", "-n", namespace,
                                 check=False).returncode != 0  # fmt: skip

    control_plane.kubectl(
        "patch", SANDBOXES, "stuck", "-n", namespace, "--type=merge",
        "-p", '{"metadata": {"finalizers": null}}',
    )  # fmt: skip
    done = run_hook(control_plane, script, tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every Sandbox is gone" in done.stdout
    listed = json.loads(control_plane.kubectl("get", SANDBOXES, "-A", "-o", "json").stdout)
    assert listed["items"] == []
    pools = json.loads(control_plane.kubectl("get", POOLS, "-A", "-o", "json").stdout)
    assert pools["items"] == []


def test_uninstall_leaves_only_the_crd(
    cluster_helm: Helm, control_plane: ControlPlane, release: str
) -> None:
    """Runs last in this module (pytest keeps file order): the release goes, the CRD stays."""
    objects = manifest_objects(cluster_helm)
    cluster_helm.run("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", *NO_HOOK)
    left = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if live(control_plane, o)]
    assert left == []
    assert control_plane.kubectl("get", "crd", SANDBOXES).returncode == 0
    assert control_plane.kubectl("get", "crd", POOLS).returncode == 0
    # the release is gone for good: installing again works (the fixture's uninstall is a no-op)
    cluster_helm.run("install", *install_args(INSTALL_VALUES), *WAIT)
    assert cluster_helm.run("status", RELEASE, "-n", SYSTEM).returncode == 0
