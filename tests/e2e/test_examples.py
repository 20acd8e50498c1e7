"""Every manifest in examples/ is applied to the running system and does what it says."""

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.corpus import EXAMPLES, documents, example_files
from tests.e2e.conftest import System

Check = Callable[[System, str], None]


def _output(system: System, name: str, command: str) -> str:
    code, output = system.run(name, command)
    assert code == 0, output
    return output


def check_hello(system: System, name: str) -> None:
    assert _output(system, name, "echo hello; hostname").split() == ["hello", "hello"]


def check_worker(system: System, name: str) -> None:
    output = _output(
        system, name, "hostname; echo $DEBUG $API_PORT; grep -c ' /tmp/scratch ' /proc/mounts"
    )
    assert output.split() == ["worker", "true", "8000", "1"]
    assert _output(system, name, "nproc").strip() == "2"


def check_scripts(system: System, name: str) -> None:
    assert _output(system, name, "setup && start").strip() == "configured"
    assert _output(system, name, "stat -c %a /.msb/scripts/start").strip() == "755"


def check_patches(system: System, name: str) -> None:
    assert _output(system, name, "cat /etc/greeting.txt") == "Hello from a patched rootfs!\n"
    assert _output(system, name, "cat /etc/app.conf") == "listen = 8080\n"
    assert _output(system, name, "cat /etc/app.d/extra.conf") == "verbose = true\n"
    assert _output(system, name, "readlink /usr/local/bin/greet").strip() == "/bin/echo"
    blob = _output(system, name, "base64 /app/blob.bin").strip()
    assert base64.b64decode(blob) == bytes(range(10))
    assert _output(system, name, "stat -c %a /app/blob.bin").strip() == "600"


def check_secrets(system: System, name: str) -> None:
    output = _output(system, name, 'echo "$REGION $DB_PASSWORD"')
    assert output == "eu-west-1 not-a-real-password\n"
    # spec.secrets never enter the guest: its environment holds the placeholder, which the
    # egress proxy swaps for the value only on the way to the allowed hosts (tests/e2e/
    # test_secrets.py); the value is nowhere in its environment or files.
    assert _output(system, name, 'echo "$API_KEY"') == "$MSB_API_KEY\n"
    leaked = "env; grep -rls not-a-real-key /etc /root /.msb /tmp 2>/dev/null; true"
    assert "not-a-real-key" not in _output(system, name, leaked)


def check_custom_init(system: System, name: str) -> None:
    assert _output(system, name, "cat /proc/1/comm").strip() == "init"


def check_offline(system: System, name: str) -> None:
    assert _output(system, name, "ls /sys/class/net").split() == ["lo"]


def check_lifecycle(system: System, name: str) -> None:
    assert _output(system, name, "echo alive").strip() == "alive"


def check_pool(system: System, name: str) -> None:
    body = system.sandbox(name)
    assert body is not None
    assert body["status"]["pool"] == "busybox-warm", body["status"]
    assert _output(system, name, "hostname; echo $GREETING").split() == ["from-pool", "claimed"]


RUNNING: dict[str, Check] = {
    "hello": check_hello,
    "worker": check_worker,
    "scripts": check_scripts,
    "patches": check_patches,
    "secrets": check_secrets,
    "custom-init": check_custom_init,
    "network-none": check_offline,
    "lifecycle": check_lifecycle,
    "pool": check_pool,
}
REFUSED_BY_POLICY = {"disk-root", "bind-root"}
"""Host paths need the operator's --allow-host-paths (off by default, and in make up)."""


def test_every_example_has_an_expectation() -> None:
    assert {p.stem for p in example_files()} == set(RUNNING) | REFUSED_BY_POLICY


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.stem)
def test_example(path: Path, system: System) -> None:
    name = _sandbox_name(path)
    _pools_first(system, path)
    system.plane.kubectl("apply", "-f", str(path))
    try:
        if path.stem in REFUSED_BY_POLICY:
            body = system.wait_for_phase(name, {"Failed"}, timeout=60)
            ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "PolicyViolation"
            assert "host paths are not allowed" in ready["message"]
            return
        body = system.wait_for_phase(name, {"Running", "Failed", "Crashed"}, ready=True)
        assert body["status"]["phase"] == "Running", body["status"]
        conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        assert conditions["ImageReady"] == "True"
        assert body["status"]["image"]["digest"].startswith("sha256:")
        RUNNING[path.stem](system, name)
    finally:
        system.delete_and_wait(path)


def _pools_first(system: System, path: Path) -> None:
    """The SandboxPools of an example, applied and Ready before its Sandbox (as the example's
    comment tells users): a Sandbox that arrives before any pool VM is ready boots cold."""
    pools = [doc for doc in documents(path) if doc["kind"] == "SandboxPool"]
    for pool in pools:
        system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(pool))
    for pool in pools:
        system.plane.kubectl(
            "wait", "--for=condition=Ready", f"sandboxpool/{pool['metadata']['name']}",
            "--timeout=300s",
        )  # fmt: skip


def _sandbox_name(path: Path) -> str:
    import yaml

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Sandbox"]
    assert len(docs) == 1, f"{path.relative_to(EXAMPLES.parent)} must hold one Sandbox"
    return str(docs[0]["metadata"]["name"])
