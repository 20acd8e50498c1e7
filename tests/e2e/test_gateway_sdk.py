"""The unmodified microsandbox SDK (PyPI ``microsandbox==0.7.11``, cloud backend) against the
gateway, with Kubernetes tokens, on real VMs.

One sandbox (``sdk-main``) carries most checks, in file order: its features, the filesystem,
the errors, RBAC and namespace isolation, then stop, start and removal. Every VM boot under
TCG costs seconds, so the module boots two VMs and restarts one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from microsandbox import (
    BackendKind,
    FsEntryKind,
    InvalidConfigError,
    MicrosandboxError,
    Patch,
    Sandbox,
    SandboxAlreadyExistsError,
    SandboxHandle,
    SandboxNotFoundError,
    SandboxStatus,
    Volume,
    backend_scope,
)

from kubesandbox_devenv import services
from kubesandbox_devenv.binaries import REPO_ROOT
from tests.e2e.conftest import System

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

IMAGE = "busybox:1.36"
NAME = "sdk-main"
NAMESPACE = "default"
OTHER_NAMESPACE = "sdk-other"
BIG = 10 * 1024 * 1024


@contextmanager
def cloud(system: System, token: str, namespace: str = NAMESPACE) -> Iterator[None]:
    """The SDK's cloud backend pointed at the gateway, as MSB_BACKEND/MSB_API_URL/MSB_API_KEY
    would set it, for the calls inside the block."""
    with backend_scope(
        BackendKind.CLOUD, url=f"{system.gateway_url}/ns/{namespace}", api_key=token
    ):
        yield


def denied(error: BaseException) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("403", "forbidden", "401", "unauthorized"))


async def run_directly(system: System, command: str) -> tuple[int, str]:
    """Through the node agent's relay socket, past the gateway (to look, not to test it)."""
    body = system.sandbox(NAME)
    assert body is not None
    return await services.run_in_sandbox(system.relay_socket(body), command)


def wait_gone(system: System, name: str, timeout: float = 120.0) -> None:
    """The Sandbox object goes once its finalizer ran (the node agent removed the VM)."""
    deadline = time.monotonic() + timeout
    while system.sandbox(name) is not None:
        assert time.monotonic() < deadline, f"{name} still exists {timeout:.0f}s after removal"
        time.sleep(0.5)


async def viewer_shell(handle: SandboxHandle, script: str) -> None:
    """Connecting may succeed (it only reads the Sandbox); running anything must not."""
    sandbox = await handle.connect()
    await sandbox.shell(script)


@pytest.fixture(scope="module")
def big_file() -> bytes:
    return os.urandom(BIG)


async def test_create_with_everything_and_run(system: System) -> None:
    with cloud(system, system.demo_token):
        sandbox = await Sandbox.create(  # noqa: S604 (`shell` is the guest's shell)
            NAME,
            image=IMAGE,
            env={"GREETING": "hi there", "MODE": "sdk"},
            workdir="/srv/app",
            shell="/bin/sh",
            scripts={"greet": '#!/bin/sh\necho "$GREETING from $(pwd)"\n'},
            patches=[
                Patch.text("/etc/motd", "patched by the SDK\n"),
                Patch.mkdir("/srv/data"),
                Patch.append("/etc/motd", "and appended\n"),
            ],
            volumes={"/scratch": Volume.tmpfs(size_mib=32)},
            labels={"suite": "gateway-sdk"},
        )

        greeting = await sandbox.exec("greet")
        assert (greeting.exit_code, greeting.stdout_text) == (0, "hi there from /srv/app\n")

        shell = await sandbox.shell("echo $MODE; cat /etc/motd; test -d /srv/data && echo dir")
        assert shell.stdout_text == "sdk\npatched by the SDK\nand appended\ndir\n"

        mounts = await sandbox.shell("grep ' /scratch ' /proc/mounts")
        assert mounts.stdout_text.split()[2] == "tmpfs", mounts.stdout_text

        failing = await sandbox.shell("echo oops >&2; exit 3")
        assert (failing.exit_code, failing.success, failing.stderr_text) == (3, False, "oops\n")

        echoed = await sandbox.exec("cat", stdin=b"through stdin\n" * 1000)
        assert echoed.stdout_bytes == b"through stdin\n" * 1000

        per_exec = await sandbox.exec("sh", ["-c", "echo $EXTRA $GREETING"], env={"EXTRA": "x"})
        assert per_exec.stdout_text == "x hi there\n"

        listed = await Sandbox.list()
        mine = [h for h in listed.sandboxes if h.name == NAME]
        assert len(mine) == 1
        assert mine[0].status == SandboxStatus.RUNNING
        body = system.sandbox(NAME)
        assert body is not None
        assert mine[0].id.removeprefix("cloud:") == body["metadata"]["uid"]


async def test_filesystem_round_trip(system: System, big_file: bytes) -> None:
    digest = hashlib.sha256(big_file).hexdigest()
    with cloud(system, system.demo_token):
        sandbox = await (await Sandbox.get(NAME)).connect()
        fs = sandbox.fs

        await fs.write("/srv/app/big.bin", big_file)
        inside = await sandbox.shell("sha256sum /srv/app/big.bin")
        assert inside.stdout_text.split()[0] == digest
        assert hashlib.sha256(await fs.read("/srv/app/big.bin")).hexdigest() == digest

        stat = await fs.stat("/srv/app/big.bin")
        assert (stat.kind, stat.size) == (FsEntryKind.FILE, BIG)

        await fs.mkdir("/srv/app/sub")
        assert (await fs.stat("/srv/app/sub")).kind == FsEntryKind.DIRECTORY
        await fs.rename("/srv/app/big.bin", "/srv/app/sub/big.bin")
        await fs.copy("/srv/app/sub/big.bin", "/srv/app/copy.bin")
        names = sorted(entry.path.rsplit("/", 1)[-1] for entry in await fs.list("/srv/app"))
        assert names == ["copy.bin", "sub"]
        assert not await fs.exists("/srv/app/big.bin")
        assert await fs.exists("/srv/app/copy.bin")

        await fs.remove("/srv/app/copy.bin")
        assert not await fs.exists("/srv/app/copy.bin")
        copied = await sandbox.shell("sha256sum /srv/app/sub/big.bin")
        assert copied.stdout_text.split()[0] == digest

        await fs.write("/srv/app/note.txt", b"kept across a restart\n")
        assert await fs.read_text("/srv/app/note.txt") == "kept across a restart\n"


async def test_errors_map_to_sdk_exceptions(system: System) -> None:
    with cloud(system, system.demo_token):
        with pytest.raises(SandboxAlreadyExistsError):
            await Sandbox.create(NAME, image=IMAGE)
        with pytest.raises(SandboxNotFoundError):
            await Sandbox.get("sdk-does-not-exist")
        with pytest.raises(InvalidConfigError):
            await Sandbox.create("sdk-invalid", image=IMAGE, cpus=100)  # 1..64
    assert system.sandbox("sdk-invalid") is None
    assert system.sandbox(NAME) is not None  # the refused duplicate changed nothing


async def test_a_token_without_rbac_is_denied(system: System) -> None:
    token = system.token_for(NAMESPACE, "sdk-nobody")
    with cloud(system, token):
        with pytest.raises(MicrosandboxError) as got:
            await Sandbox.get(NAME)
        assert denied(got.value), got.value
        with pytest.raises(MicrosandboxError) as listed:
            await Sandbox.list()
        assert denied(listed.value), listed.value
    with cloud(system, "not-a-token"):
        with pytest.raises(MicrosandboxError) as bogus:
            await Sandbox.get(NAME)
        assert denied(bogus.value), bogus.value


async def test_view_can_get_but_not_exec(system: System) -> None:
    token = system.token_for(NAMESPACE, "sdk-viewer", "view")
    with cloud(system, token):
        handle = await Sandbox.get(NAME)
        assert handle.status == SandboxStatus.RUNNING
        with pytest.raises(MicrosandboxError) as got:
            await viewer_shell(handle, "echo should not run > /srv/app/viewer")
        assert denied(got.value), got.value
        with pytest.raises(MicrosandboxError) as stopping:
            await handle.stop()
        assert denied(stopping.value), stopping.value
    code, output = await run_directly(system, "test -e /srv/app/viewer; echo $?")
    assert (code, output) == (0, "1\n")
    assert (system.sandbox(NAME) or {})["spec"].get("lifecycle", {}).get("state", "Running") == (
        "Running"
    )


async def test_other_namespaces_are_isolated(system: System) -> None:
    token = system.token_for(OTHER_NAMESPACE, "sdk-other-editor", "edit")
    with cloud(system, token, OTHER_NAMESPACE):
        # its own namespace works, and does not contain the sandbox of `default`
        listed = await Sandbox.list()
        assert NAME not in [h.name for h in listed.sandboxes]
        with pytest.raises(SandboxNotFoundError):
            await Sandbox.get(NAME)
    with cloud(system, token, NAMESPACE):
        with pytest.raises(MicrosandboxError) as got:
            await Sandbox.get(NAME)
        assert denied(got.value), got.value
        with pytest.raises(MicrosandboxError) as removing:
            await Sandbox.remove(NAME)
        assert denied(removing.value), removing.value
    assert system.sandbox(NAME) is not None


async def test_stop_start_keeps_files_then_remove(system: System, big_file: bytes) -> None:
    digest = hashlib.sha256(big_file).hexdigest()
    with cloud(system, system.demo_token):
        sandbox = await (await Sandbox.get(NAME)).connect()
        await sandbox.stop()
        assert (await Sandbox.get(NAME)).status == SandboxStatus.STOPPED
        assert (system.sandbox(NAME) or {}).get("status", {}).get("phase") == "Stopped"

        restarted = await Sandbox.start(NAME)  # the static call: POST by-name/{name}/start
        assert (await Sandbox.get(NAME)).status == SandboxStatus.RUNNING
        kept = await restarted.shell("cat note.txt; sha256sum sub/big.bin; echo $GREETING")
        lines = kept.stdout_text.splitlines()
        assert lines[0] == "kept across a restart"
        assert lines[1].split()[0] == digest
        assert lines[2] == "hi there"

        await restarted.stop()
        await Sandbox.remove(NAME)
        # remove answers once the finalizer ran (the node agent removed the VM and its files),
        # so the name is free at once, as with microsandbox
        with pytest.raises(SandboxNotFoundError):
            await Sandbox.get(NAME)
    assert system.sandbox(NAME) is None


def test_a_microsandbox_script_runs_unchanged(system: System) -> None:
    """examples/sdk/hello_sdk.py, as a microsandbox user wrote it, with only the three
    environment variables of the SDK's cloud backend."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MSB_") and key not in ("PYTHONPATH",)
    }
    env |= {
        "MSB_BACKEND": "cloud",
        "MSB_API_URL": f"{system.gateway_url}/ns/{NAMESPACE}",
        "MSB_API_KEY": system.demo_token,
    }
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "sdk" / "hello_sdk.py")],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Hello from hello-sdk, in /app"
    assert lines[1] == "Welcome to a microVM."
    assert lines[2].startswith("Linux ")
    assert lines[3:] == ["sha256 of the payload matches inside the VM: True", "removed hello-sdk"]
    wait_gone(system, "hello-sdk")


def test_kubeconfig_for_a_token(system: System) -> None:
    """The fixture's kubeconfig carries the token and the namespace (the CLI's tests use it)."""
    token = system.token_for(OTHER_NAMESPACE, "sdk-kubeconfig", "view")
    kubeconfig = system.kubeconfig_for(token, OTHER_NAMESPACE)
    assert kubeconfig.stat().st_mode & 0o777 == 0o600

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(system.plane.binaries.kubectl), "--kubeconfig", str(kubeconfig), *args],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{OTHER_NAMESPACE}:sdk-kubeconfig"
    assert kubectl("get", "sandboxes").returncode == 0  # namespace from the kubeconfig
    can_exec = kubectl("auth", "can-i", "create", "sandboxes.kubesandbox.dev", "--subresource=exec")
    assert can_exec.stdout.strip() == "no"
    assert kubectl("get", "sandboxes", "-n", NAMESPACE).returncode != 0
