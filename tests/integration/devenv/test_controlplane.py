from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_devenv.binaries import KUBERNETES_VERSION
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodes import NODE_AGENT_LABEL
from kubesandbox_devenv.probes import HealthProbe

pytestmark = pytest.mark.controlplane

WAIT_TIMEOUT = 60.0
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return result


@pytest.fixture
def core(control_plane: ControlPlane) -> Iterator[client.CoreV1Api]:
    with control_plane.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"devenv-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def default_service_account(core: client.CoreV1Api, namespace: str) -> bool | None:
    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return True


def test_version_is_the_pinned_release(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        version = client.VersionApi(api).get_code()
    assert version.git_version == KUBERNETES_VERSION


def test_registered_nodes_are_ready_and_labelled(core: client.CoreV1Api) -> None:
    nodes = core.list_node(label_selector=f"{NODE_AGENT_LABEL}=true").items
    assert len(nodes) == 2
    for node in nodes:
        assert node.status is not None
        assert node.status.conditions is not None
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True"
        assert not (node.spec and node.spec.taints)


def test_user_without_bindings_is_forbidden(control_plane: ControlPlane) -> None:
    jane = control_plane.issue_user("jane", groups=["developers"])
    with control_plane.api_client(jane) as api, pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).list_namespaced_pod("default")
    assert refused.value.status == 403
    message = json.loads(refused.value.body or "{}")["message"]
    assert 'User "jane" cannot list resource "pods"' in message


def test_rolebinding_grants_a_user_access(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    bob = control_plane.issue_user("bob")
    with control_plane.api_client() as api:
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="bob-view"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"
                ),
                subjects=[
                    client.RbacV1Subject(
                        kind="User", name="bob", api_group="rbac.authorization.k8s.io"
                    )
                ],
            ),
        )
    with control_plane.api_client(bob) as api:
        as_bob = client.CoreV1Api(api)

        def listed() -> client.V1PodList | None:
            try:
                return as_bob.list_namespaced_pod(namespace)
            except ApiException as error:
                if error.status == 403:  # the authorizer's informer has not seen the binding
                    return None
                raise

        pods = wait_for(listed, "the RoleBinding to reach the RBAC authorizer")
    assert pods.items == []


def test_anonymous_requests_see_version_and_nothing_else(control_plane: ControlPlane) -> None:
    port = control_plane.ports.apiserver
    version_ok, _ = HealthProbe(port, "/version", ca=control_plane.ca).check()
    pods_ok, pods = HealthProbe(port, "/api/v1/pods", ca=control_plane.ca).check()
    assert version_ok
    assert not pods_ok
    assert pods.startswith("HTTP 403")


def create_bound_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    wait_for(lambda: default_service_account(core, namespace), "the default ServiceAccount")
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                node_selector={NODE_AGENT_LABEL: "true"},
                containers=[client.V1Container(name="main", image="example.invalid/none")],
            ),
        ),
    )

    def bound() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.spec and pod.spec.node_name else None

    return wait_for(bound, f"kube-scheduler to bind Pod {name}")


def test_pod_is_bound_to_a_registered_node_by_the_scheduler(
    core: client.CoreV1Api, namespace: str
) -> None:
    pod = create_bound_pod(core, namespace, "sandbox")

    assert pod.spec is not None
    assert pod.spec.node_name is not None
    assert pod.spec.node_name.startswith("kubesandbox-node-")


def test_pod_bound_token_names_the_node(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    pod = create_bound_pod(core, namespace, "agent")
    assert pod.metadata is not None
    assert pod.spec is not None
    issued = core.create_namespaced_service_account_token(
        "default",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name="agent", uid=pod.metadata.uid
                ),
            )
        ),
    )
    assert issued.status is not None
    with control_plane.api_client() as api:
        review = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=issued.status.token))
        )
    assert review.status is not None
    assert review.status.user is not None
    assert review.status.user.extra is not None
    assert review.status.user.extra["authentication.kubernetes.io/node-name"] == [
        pod.spec.node_name
    ]


def test_service_account_token_is_issued_and_reviewed(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot"))
    )
    issued = core.create_namespaced_service_account_token(
        "robot",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    )
    assert issued.status is not None
    with control_plane.api_client() as api:
        review = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=issued.status.token))
        )
    assert review.status is not None
    assert review.status.authenticated
    assert review.status.user is not None
    assert review.status.user.username == f"system:serviceaccount:{namespace}:robot"


def test_kubectl_runs_as_admin(control_plane: ControlPlane) -> None:
    result = control_plane.kubectl("auth", "can-i", "*", "*", "--all-namespaces")
    assert result.stdout.strip() == "yes"


WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.devenv.kubesandbox.dev
spec:
  group: devenv.kubesandbox.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"""


def test_install_crds_waits_until_established(control_plane: ControlPlane, tmp_path: Path) -> None:
    (tmp_path / "widgets.yaml").write_text(WIDGET_CRD)
    (tmp_path / "README.md").write_text("not a manifest")

    installed = control_plane.install_crds(tmp_path)

    assert [path.name for path in installed] == ["widgets.yaml"]
    result = control_plane.kubectl("get", "widgets", "--all-namespaces", "-o", "name")
    assert result.stdout == ""
