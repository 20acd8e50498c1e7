"""The images of the root Dockerfile, built by devenv/images.py and checked with real tools.

Everything here looks at the built images, not at the Dockerfile: commands run inside them
(``buildah run``), files are read from their mounted root filesystems, and the registry they
were pushed to serves them to ``skopeo``. The build is cached by content: on a warm cache this
module costs a tag and a push per image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubesandbox_devenv import images
from kubesandbox_devenv.binaries import REPO_ROOT
from kubesandbox_devenv.registry import Registry, require_tools

pytestmark = [pytest.mark.slow, pytest.mark.registry, pytest.mark.timeout(3600)]

NODE_TOOLS = {
    # command: what its output must contain
    "qemu-system-x86_64 -machine help": "microvm",
    "/usr/lib/qemu/virtiofsd --version": "virtiofsd version",
    "qemu-img --version": "qemu-img version",
    "mkfs.erofs --help 2>&1 || true": "usage",
    "mkfs.ext4 -V 2>&1": "mke2fs",
    "iptables --version": "iptables v",
    "ip -V": "iproute2",
    "sysctl --version": "procps",
    "zstd --version": "Zstandard",
    # rootfs/lower.py reads from erofs layers in a private mount namespace
    "unshare --version": "util-linux",
    "mount --version": "util-linux",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    missing = require_tools("buildah", "debootstrap", "skopeo", "docker-registry")
    assert not missing, f"`make deps` installs these Debian packages: {missing}"
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build inputs of this checkout, frozen in a git repository of their own.

    The checkout is shared with people editing it; building a copy keeps the tag of this
    module's builds fixed while they do. The layer cache is by content, so it costs nothing.
    """
    copy = tmp_path_factory.mktemp("source")
    for name in images.input_files(REPO_ROOT):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)
    subprocess.run(["git", "init", "-q", str(copy)], check=True)
    subprocess.run(["git", "-C", str(copy), "add", "-A"], check=True)
    return copy


@pytest.fixture(scope="module")
def built(registry: Registry, source: Path) -> images.Images:
    return images.build_images(registry.host, repo=source)


@pytest.fixture(scope="module")
def buildah() -> images.Buildah:
    return images.Buildah()


class Container:
    """A working container of an image, its root filesystem mounted on the host."""

    def __init__(self, buildah: images.Buildah, ref: str) -> None:
        self.buildah = buildah
        self.name = buildah("from", "--pull=never", ref, what=f"buildah from {ref}").strip()
        self.root = Path(buildah("mount", self.name, what="buildah mount").strip())

    def run(self, command: str, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.buildah.argv(
                "run", "--isolation=chroot", *options, self.name, "--", "sh", "-c", command
            ),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )

    def remove(self) -> None:
        self.buildah("umount", self.name, what="buildah umount")
        self.buildah("rm", self.name, what="buildah rm")


@pytest.fixture(scope="module")
def node_agent(built: images.Images, buildah: images.Buildah) -> Iterator[Container]:
    container = Container(buildah, built.node_agent.ref)
    yield container
    container.remove()


@pytest.fixture(scope="module")
def controller(built: images.Images, buildah: images.Buildah) -> Iterator[Container]:
    container = Container(buildah, built.controller.ref)
    yield container
    container.remove()


def image_config(buildah: images.Buildah, ref: str) -> dict[str, object]:
    info = json.loads(buildah("inspect", "--type", "image", ref, what="inspect"))
    config: dict[str, object] = info["OCIv1"]["config"]
    return config


def image_env(buildah: images.Buildah, ref: str) -> dict[str, str]:
    env = image_config(buildah, ref)["Env"]
    assert isinstance(env, list)
    return dict(str(item).split("=", 1) for item in env)


def test_both_targets_are_tagged_by_content_in_the_registry(
    built: images.Images, registry: Registry
) -> None:
    assert re.fullmatch(r"dev-[0-9a-f]{12}", built.tag)
    assert built.node_agent.ref == f"{registry.host}/node-agent:{built.tag}"
    assert built.controller.ref == f"{registry.host}/controller:{built.tag}"
    assert built.node_agent.image_id != built.controller.image_id
    for image in (built.node_agent, built.controller):
        assert 0 < image.pushed_size < image.size


def test_a_second_build_of_the_same_tree_builds_and_pushes_nothing(
    built: images.Images, registry: Registry, source: Path
) -> None:
    again = images.build_images(registry.host, repo=source)
    assert again.tag == built.tag
    assert (again.built, again.pushed) == ((), ())
    assert again.node_agent == built.node_agent
    assert again.controller == built.controller


def test_a_changed_source_is_rebuilt_reusing_every_layer_below_the_project(
    built: images.Images, registry: Registry, source: Path, buildah: images.Buildah
) -> None:
    # A change no earlier run made: the image store is a cache that outlives test runs, so a
    # fixed edit would find its image already built by the last run and (rightly) build nothing.
    changed = source / "operator" / "main.py"
    edit = f"\n# a change {uuid.uuid4().hex}\n"
    changed.write_text(changed.read_text() + edit)
    try:
        rebuilt = images.build_images(registry.host, repo=source)
    finally:
        changed.write_text(changed.read_text().removesuffix(edit))
    try:
        assert rebuilt.tag != built.tag
        assert set(rebuilt.built) == set(rebuilt.pushed) == {"node-agent", "controller"}
        pairs = [(built.node_agent, rebuilt.node_agent), (built.controller, rebuilt.controller)]
        for old, new in pairs:
            before, after = buildah.layers(old.ref), buildah.layers(new.ref)
            # Only the last two layers (the wheel copied in, then installed) see Python sources.
            assert before[:-2] == after[:-2], (old.ref, new.ref)
            assert len(before) == len(after)
            assert before[-2:] != after[-2:]
    finally:
        # One-off images: left in the cached store, every run would add two.
        for image in (rebuilt.node_agent, rebuilt.controller):
            local = f"{images.LOCAL_PREFIX}/{image.target}:{rebuilt.tag}"
            buildah("rmi", local, image.ref, what=f"removing {image.ref}")


def test_node_agent_has_qemu_microvm_virtiofsd_and_the_storage_and_network_tools(
    node_agent: Container,
) -> None:
    for command, expected in NODE_TOOLS.items():
        result = node_agent.run(command)
        assert expected in result.stdout + result.stderr, (command, result)


def test_node_agent_runs_as_root_with_its_entry_point(
    built: images.Images, buildah: images.Buildah, node_agent: Container
) -> None:
    config = image_config(buildah, built.node_agent.ref)
    assert config.get("User", "") in ("", "0", "root")
    assert config["Cmd"] == ["kubesandbox-node-agent"]
    result = node_agent.run("id -u && kubesandbox-node-agent --help")
    assert result.returncode == 0, result
    assert result.stdout.startswith("0\n")
    assert "--allow-emulation" in result.stdout


def test_node_agent_bakes_a_static_guest_agent(
    built: images.Images, buildah: images.Buildah, node_agent: Container
) -> None:
    env = image_env(buildah, built.node_agent.ref)
    agent = node_agent.root / env["KUBESANDBOX_GUEST_AGENT"].lstrip("/")
    assert agent.is_file()
    headers = subprocess.run(
        ["readelf", "-l", "-d", str(agent)], capture_output=True, text=True, check=True
    ).stdout
    assert "Program Headers:" in headers
    assert "program interpreter" not in headers
    assert "NEEDED" not in headers
    version = node_agent.run(f"{env['KUBESANDBOX_GUEST_AGENT']} --version")
    assert version.stdout.startswith("kubesandbox-agent "), version


def test_node_agent_builds_its_boot_image_from_the_baked_kernel_without_a_download(
    node_agent: Container,
) -> None:
    # The node agent's own code, in the image, offline: kernel from $KUBESANDBOX_KERNEL_DIR,
    # guest agent from $KUBESANDBOX_GUEST_AGENT, the base initramfs into a scratch cache.
    result = node_agent.run(
        "KUBESANDBOX_CACHE=/tmp/bootcache python -m kubesandbox_node.bootimage "
        "&& ls /tmp/bootcache && rm -rf /tmp/bootcache"
    )
    assert result.returncode == 0, result
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    release = lines["RELEASE"]
    assert lines["KERNEL"] == f"/usr/lib/kubesandbox/kernel/boot/vmlinux-{release}"
    assert {"virtio_mmio", "virtio_console", "erofs", "virtiofs"} <= set(
        lines["MODULES"].split(",")
    )
    assert lines["INITRAMFS"].startswith("/tmp/bootcache/bootimage/")
    assert result.stdout.splitlines()[-1] == "bootimage", "only the boot image was cached"
    modules = node_agent.root / "usr/lib/kubesandbox/kernel/lib/modules" / release
    assert (modules / "modules.order").is_file()
    assert (modules / "kernel/drivers/virtio/virtio_mmio.ko").is_file()


# Linux capabilities by number (capability.h); the VM test grants the ones this process holds.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip

BOOT_A_VM = """
import asyncio, os, shutil, subprocess, tempfile
from pathlib import Path
from kubesandbox_node.bootimage import initramfs
from kubesandbox_node.vm import Share, VMSpec, boot
from kubesandbox_node.vm.bootconfig import BootConfig, ShareRoot
from kubesandbox_node.vm.host import tsc_khz
from kubesandbox_protocol import AgentClient

async def main():
    image = initramfs.build(Path(os.environ["KUBESANDBOX_GUEST_AGENT"]))
    directory = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))
    root = directory / "root"  # the guest's root: the image's /usr under a writable skeleton
    for name in ("usr", "proc", "sys", "dev", "tmp", "run", "etc", "root"):
        (root / name).mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    subprocess.run(["mount", "--bind", "-o", "ro", "/usr", str(root / "usr")], check=True)
    config = BootConfig(hostname="inimage", root=ShareRoot(tag="root"))
    spec = VMSpec(
        name="inimage", accel="tcg", kernel=image.kernel,
        initrd=initramfs.write_initrd(image, config, directory / "initrd.cpio"),
        state_dir=directory, memory_mib=512, tsc_khz=tsc_khz(),
        shares=(Share("root", root, read_only=False),),
    )
    vm = await boot(spec, directory / "agent.sock", ready_timeout=300)
    try:
        async with await AgentClient.connect(directory / "agent.sock") as client:
            result = await client.run("sh", ["-c", "uname -r; . /lib/os-release; echo $ID"])
            print("GUEST", result.code, result.stdout.decode().split(), flush=True)
    finally:
        await vm.stop(grace=10)
        subprocess.run(["umount", str(root / "usr")], check=False)
        shutil.rmtree(directory, ignore_errors=True)

asyncio.run(main())
"""


def held_capabilities() -> list[str]:
    bounding = next(
        int(line.split()[1], 16)
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("CapBnd:")
    )
    return [f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]


@pytest.mark.vm
def test_node_agent_image_boots_a_vm_with_its_own_qemu_kernel_virtiofsd_and_guest_agent(
    node_agent: Container,
) -> None:
    """Everything a sandbox needs, from inside the image: the boot image built from the baked
    kernel and guest agent, QEMU (TCG), virtiofsd serving the guest's root, a command run in
    the guest through the agent protocol. The DaemonSet is privileged: the container gets the
    capabilities this process holds, and a tmpfs on /run (virtiofsd's lock directory; buildah's
    chroot isolation leaves the image's /run read-only)."""
    script = node_agent.root / "tmp" / "boot_a_vm.py"
    script.write_text(BOOT_A_VM)
    try:
        caps = [f"--cap-add={cap}" for cap in held_capabilities()]
        result = node_agent.run(
            "python /tmp/boot_a_vm.py", *caps, "--mount", "type=tmpfs,destination=/run"
        )
    finally:
        script.unlink()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    release = node_agent.run("ls /usr/lib/kubesandbox/kernel/lib/modules").stdout.strip()
    assert f"GUEST 0 ['{release}', 'debian']" in result.stdout, result.stdout[-3000:]


def test_controller_runs_as_65532_and_its_entry_points_start(
    built: images.Images, buildah: images.Buildah, controller: Container
) -> None:
    assert image_config(buildah, built.controller.ref)["User"] == "65532:65532"
    result = controller.run("id -u; id -g; kubesandbox-operator --help; kubesandbox-gateway --help")
    assert result.returncode == 0, result
    assert result.stdout.startswith("65532\n65532\n")
    assert "usage: kubesandbox-operator" in result.stdout
    assert "usage: kubesandbox-gateway" in result.stdout


def test_controller_holds_no_qemu_and_the_project_is_installed_not_editable(
    controller: Container, node_agent: Container
) -> None:
    assert controller.run("command -v qemu-system-x86_64").returncode != 0
    assert not (controller.root / "usr/lib/kubesandbox").exists()
    for container in (controller, node_agent):
        result = container.run(
            "python -c 'import kubesandbox_operator.main as m, kubesandbox_node; "
            "print(m.__file__)'; ls /opt/kubesandbox/bin"
        )
        assert result.returncode == 0, result
        assert result.stdout.startswith(
            "/opt/kubesandbox/lib/python3.11/site-packages/kubesandbox_operator/main.py\n"
        )
        assert "kubesandbox-devenv" not in result.stdout


def test_both_images_are_pullable_from_the_registry(built: images.Images, tmp_path: Path) -> None:
    for image in (built.node_agent, built.controller):
        inspect = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--tls-verify=false", f"docker://{image.ref}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert (inspect["Os"], inspect["Architecture"]) == ("linux", "amd64")
        layout = tmp_path / image.target
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{image.ref}",
                f"oci:{layout}:pulled",
            ],
            check=True,
            capture_output=True,
        )
        blobs = sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())
        assert blobs >= image.pushed_size
