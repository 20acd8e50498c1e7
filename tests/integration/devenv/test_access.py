"""The demo identity ``make up`` hands out: RBAC applied, ServiceAccount ``default/demo`` bound
to ``edit``, its token and kubeconfig (0600), reused while valid and reissued when not."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane


def as_user(plane: ControlPlane, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(plane.binaries.kubectl), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def wait_allowed(plane: ControlPlane, kubeconfig: Path, *args: str) -> None:
    deadline = time.monotonic() + 60  # role aggregation is asynchronous
    while as_user(plane, kubeconfig, "auth", "can-i", *args).stdout.strip() != "yes":
        assert time.monotonic() < deadline, f"never allowed: {args}"
        time.sleep(0.3)


def test_demo_identity(
    control_plane: ControlPlane, installed_crds: list[Path], tmp_path: Path
) -> None:
    services.SystemNamespace(control_plane).start()
    access = services.AccessComponent(services.Paths(tmp_path), control_plane)

    summary = access.start()

    assert "token issued" in summary
    assert access.is_alive()
    for path in (access.token_file, access.kubeconfig_file):
        assert path.stat().st_mode & 0o777 == 0o600
    token = access.token_file.read_text().strip()
    expiry = services.token_expiry(token)
    assert expiry is not None
    assert expiry > time.time() + (services.DEMO_TOKEN_DURATION_HOURS - 1) * 3600
    kubeconfig = access.kubeconfig_file
    whoami = as_user(control_plane, kubeconfig, "auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    user = json.loads(whoami.stdout)["status"]["userInfo"]["username"]
    assert user == "system:serviceaccount:default:demo"
    # namespace default comes from the kubeconfig: no -n anywhere
    wait_allowed(
        control_plane, kubeconfig, "create", "sandboxes.kubesandbox.dev", "--subresource=exec"
    )
    assert as_user(control_plane, kubeconfig, "get", "sandboxes").returncode == 0
    denied = as_user(control_plane, kubeconfig, "get", "sandboxes", "-n", "kube-system")
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    # the CLI's discovery: the gateway's Service (absent here) is readable, others are not
    service = as_user(
        control_plane, kubeconfig, "auth", "can-i", "get", "services/kubesandbox-gateway",
        "-n", services.SYSTEM_NAMESPACE,
    )  # fmt: skip
    assert service.stdout.strip() == "yes"

    # a second start reuses the token while it is valid
    assert "token reused" in access.start()
    assert access.token_file.read_text().strip() == token

    # a token of a deleted ServiceAccount is dead: the next start issues a new one
    control_plane.kubectl("delete", "serviceaccount", "demo", "-n", "default")
    deadline = time.monotonic() + 30  # the apiserver sees the deletion through its informer
    while as_user(control_plane, kubeconfig, "auth", "whoami").returncode == 0:
        assert time.monotonic() < deadline, "the token outlived its ServiceAccount"
        time.sleep(0.2)
    assert "token issued" in access.start()
    renewed = access.token_file.read_text().strip()
    assert renewed != token
    wait_allowed(control_plane, kubeconfig, "get", "sandboxes.kubesandbox.dev")


def test_token_for_a_new_account(control_plane: ControlPlane, installed_crds: list[Path]) -> None:
    services.SystemNamespace(control_plane).start()
    services.apply_rbac(control_plane)
    control_plane.kubectl("create", "namespace", "access-view")
    token = services.issue_token(control_plane, "access-view", "reader", "view")
    bare = services.issue_token(control_plane, "access-view", "bare")
    for who, expected in ((token, "yes"), (bare, "no")):
        path = Path(control_plane.kubeconfig).with_name(f"kubeconfig-{expected}")
        kubeconfig = services.write_kubeconfig(control_plane, path, who, "access-view")
        if expected == "yes":
            wait_allowed(control_plane, kubeconfig, "list", "sandboxes.kubesandbox.dev")
        answer = as_user(
            control_plane, kubeconfig, "auth", "can-i", "list", "sandboxes.kubesandbox.dev"
        )
        assert answer.stdout.strip() == expected
        exec_answer = as_user(
            control_plane, kubeconfig, "auth", "can-i", "create", "sandboxes.kubesandbox.dev",
            "--subresource=exec",
        )  # fmt: skip
        assert exec_answer.stdout.strip() == "no"
