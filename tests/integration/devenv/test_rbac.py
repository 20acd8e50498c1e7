"""The chart's RBAC on a real control plane: the Sandbox roles aggregate into the built-in
admin, edit and view roles (the controller manager's clusterrole-aggregation controller does
it), and the gateway's ClusterRole grants exactly what docs/rbac.md says."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

SANDBOXES = "sandboxes.kubesandbox.dev"
EXEC = "sandboxes.kubesandbox.dev/exec"


def can_i(plane: ControlPlane, who: str, verb: str, resource: str, namespace: str) -> bool:
    """``kubectl auth can-i`` as ``who`` (admin impersonates): a SubjectAccessReview.
    ``resource`` may be ``plural.group/subresource`` (kubectl itself reads ``TYPE/NAME``)."""
    args = ["auth", "can-i", verb, "-n", namespace, f"--as={who}"]
    plural, _, subresource = resource.partition("/")
    if subresource and plural.startswith("sandboxes"):
        args += [plural, f"--subresource={subresource}"]
    else:
        args.append(resource)
    result = plane.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def wait_can_i(plane: ControlPlane, who: str, verb: str, resource: str, namespace: str) -> None:
    """Aggregation is asynchronous: the controller rewrites the built-in roles shortly after."""
    deadline = time.monotonic() + 60
    while not can_i(plane, who, verb, resource, namespace):
        assert time.monotonic() < deadline, f"{who} never allowed to {verb} {resource}"
        time.sleep(0.3)


def service_account(plane: ControlPlane, namespace: str, name: str, cluster_role: str) -> str:
    plane.kubectl("create", "serviceaccount", name, "-n", namespace)
    plane.kubectl(
        "create", "rolebinding", f"{name}-{cluster_role}", f"--clusterrole={cluster_role}",
        f"--serviceaccount={namespace}:{name}", "-n", namespace,
    )  # fmt: skip
    return f"system:serviceaccount:{namespace}:{name}"


@pytest.fixture(scope="module")
def roles(control_plane: ControlPlane, installed_crds: list[Path]) -> ControlPlane:
    services.SystemNamespace(control_plane).start()
    applied = services.apply_rbac(control_plane)
    assert {"kubesandbox-edit", "kubesandbox-view", "kubesandbox-gateway"} <= set(applied)
    return control_plane


@pytest.fixture
def namespace(roles: ControlPlane) -> str:
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    roles.kubectl("create", "namespace", name)
    return name


def test_view_can_look_but_never_exec(roles: ControlPlane, namespace: str) -> None:
    viewer = service_account(roles, namespace, "viewer", "view")

    wait_can_i(roles, viewer, "get", SANDBOXES, namespace)

    assert can_i(roles, viewer, "list", SANDBOXES, namespace)
    assert can_i(roles, viewer, "watch", SANDBOXES, namespace)
    assert can_i(roles, viewer, "get", f"{SANDBOXES}/status", namespace)
    assert not can_i(roles, viewer, "create", EXEC, namespace)
    assert not can_i(roles, viewer, "get", EXEC, namespace)
    assert not can_i(roles, viewer, "create", SANDBOXES, namespace)
    assert not can_i(roles, viewer, "delete", SANDBOXES, namespace)
    # the binding is per namespace: nothing elsewhere
    assert not can_i(roles, viewer, "get", SANDBOXES, "default")


@pytest.mark.parametrize("cluster_role", ["edit", "admin"])
def test_edit_and_admin_drive_sandboxes(
    roles: ControlPlane, namespace: str, cluster_role: str
) -> None:
    user = service_account(roles, namespace, f"user-{cluster_role}", cluster_role)

    wait_can_i(roles, user, "create", EXEC, namespace)

    for verb in ("create", "get", "list", "watch", "update", "patch", "delete"):
        assert can_i(roles, user, verb, SANDBOXES, namespace), verb
    assert can_i(roles, user, "get", EXEC, namespace)
    assert can_i(roles, user, "get", f"{SANDBOXES}/status", namespace)
    assert not can_i(roles, user, "create", EXEC, "default")


def test_no_binding_no_access(roles: ControlPlane, namespace: str) -> None:
    roles.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    nobody = f"system:serviceaccount:{namespace}:nobody"
    for verb, resource in (("get", SANDBOXES), ("list", SANDBOXES), ("create", EXEC)):
        assert not can_i(roles, nobody, verb, resource, namespace)


def test_gateway_role_is_what_the_gateway_needs(roles: ControlPlane, namespace: str) -> None:
    gateway = f"system:serviceaccount:{services.SYSTEM_NAMESPACE}:kubesandbox-gateway"
    allowed = [
        ("create", "tokenreviews.authentication.k8s.io", namespace),
        ("create", "subjectaccessreviews.authorization.k8s.io", namespace),
        *((v, SANDBOXES, namespace) for v in ("create", "get", "list", "update", "delete")),
        *((v, SANDBOXES, namespace) for v in ("watch", "patch")),
        *((v, "secrets", namespace) for v in ("create", "get", "patch", "delete")),
        ("get", "leases.coordination.k8s.io", services.SYSTEM_NAMESPACE),
        ("list", "leases.coordination.k8s.io", services.SYSTEM_NAMESPACE),
    ]  # fmt: skip
    for verb, resource, ns in allowed:
        assert can_i(roles, gateway, verb, resource, ns), (verb, resource, ns)
    denied = [
        ("list", "secrets", namespace),  # it reads the companion Secret by name only
        ("create", EXEC, namespace),  # exec happens with the caller's token, not the gateway's
        ("get", "leases.coordination.k8s.io", namespace),
        ("update", "leases.coordination.k8s.io", services.SYSTEM_NAMESPACE),
        ("create", "pods", namespace),
    ]
    # discovery: any authenticated user may read the gateway's Service, and only that
    viewer = service_account(roles, namespace, "someone", "view")
    system = services.SYSTEM_NAMESPACE
    assert can_i(roles, viewer, "get", "services/kubesandbox-gateway", system)
    assert not can_i(roles, viewer, "get", "services/other", system)
    assert not can_i(roles, viewer, "list", "services", system)
    for verb, resource, ns in denied:
        assert not can_i(roles, gateway, verb, resource, ns), (verb, resource, ns)
