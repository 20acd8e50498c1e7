"""Node agent benchmark, measured in one run on this machine (TCG here).

    .venv/bin/python bench/node.py [--boots 3] [--execs 200] [--idle 3]
                                   [--sandboxes 3] [--restart N] [--skip-runtime]

- **create→ready vs raw boot**: a sandbox through the runtime (image from a loopback registry,
  already cached after the first; writable ext4 layer built; boot configuration; cgroup; QEMU;
  relay; guest agent's ``core.ready``) against QEMU started directly with the *same* kernel,
  initrd and disks until ``core.ready`` arrives on the agent port. Boots alternate.
- **exec round trip**: ``busybox true`` through the relay socket (our client) against the same
  frames written straight to a raw-booted VM's agent port (no relay). Medians and the ratio.
- **host memory per idle sandbox**: ``--sandboxes`` idle sandboxes for ``--idle`` seconds:
  cgroup charge and QEMU RSS per sandbox.
- ``--restart N``: the node agent as a process (static token, no cluster), N sandboxes, then
  ``kill -9`` of the agent, a new agent, and the checks of issue 5: all N re-adopted (same
  QEMU pids), exec works in each, nothing orphaned after deletes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended, not prepended: the repo's operator/ must not shadow

import aiohttp  # noqa: E402

from kubesandbox_api.conditions import Phase  # noqa: E402
from kubesandbox_devenv.registry import (  # noqa: E402
    Layout,
    Registry,
    build_image,
    busybox_entries,
    free_port,
    layer_tar,
)
from kubesandbox_devenv.services import qemu_processes  # noqa: E402
from kubesandbox_node.bootimage import initramfs  # noqa: E402
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig  # noqa: E402
from kubesandbox_node.images.service import ImageService  # noqa: E402
from kubesandbox_node.rootfs.assemble import SandboxRootfs  # noqa: E402
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy  # noqa: E402
from kubesandbox_node.runtime.cgroups import CgroupManager  # noqa: E402
from kubesandbox_node.runtime.manager import Runtime  # noqa: E402
from kubesandbox_node.runtime.model import DesiredSandbox  # noqa: E402
from kubesandbox_node.runtime.prepare import SandboxPreparer  # noqa: E402
from kubesandbox_node.runtime.supervisor import Supervisor, Timing  # noqa: E402
from kubesandbox_node.runtime.vmm import QemuVMM  # noqa: E402
from kubesandbox_node.vm.host import tsc_khz  # noqa: E402
from kubesandbox_node.vm.machine import launch  # noqa: E402
from kubesandbox_node.vm.spec import Drive, VMSpec  # noqa: E402
from kubesandbox_node.volumes.prepare import NamedVolumes  # noqa: E402
from kubesandbox_protocol import AgentClient  # noqa: E402
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, read_frame  # noqa: E402
from kubesandbox_protocol.messages import (  # noqa: E402
    MessageType,
    decode_body,
    encode_body,
    exec_request,
)
from tests.support.vms import guest_agent_binary  # noqa: E402

CGROUP_PARENT = f"kubesandbox-bench-{os.getpid()}"
TRUE = ("/bin/busybox", ["true"])


def desired(memory: int = 256) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "bench", "name": "bench", "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"oci": "busybox:1.36"}, "memory": memory,
                  "network": {"policy": "None"}}}
    )  # fmt: skip


async def until_running(supervisor: Supervisor) -> None:
    while supervisor.phase not in (Phase.RUNNING, Phase.CRASHED, Phase.FAILED):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    if supervisor.phase != Phase.RUNNING:
        raise RuntimeError(f"sandbox {supervisor.phase}: {supervisor.record.message}")


class Direct:
    """The agent port without a relay: read ``core.ready``, then exec frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.next_id = reader, writer, 1

    async def ready(self) -> None:
        while True:
            frame = await read_frame(self.reader)
            if frame is None:
                raise ConnectionError("agent port closed")
            if decode_body(frame.body).t == MessageType.READY:
                return

    async def run_true(self) -> None:
        sid, self.next_id = self.next_id, self.next_id + 1
        request = encode_body(MessageType.EXEC_REQUEST, exec_request(*TRUE))
        close = encode_body(MessageType.EXEC_STDIN, {"data": b""})
        self.writer.write(Frame(sid, FLAG_SESSION_START, request).encode())
        self.writer.write(Frame(sid, 0, close).encode())
        await self.writer.drain()
        while True:
            frame = await read_frame(self.reader)
            assert frame is not None
            if frame.id == sid and decode_body(frame.body).t == MessageType.EXEC_EXITED:
                return


def fresh_spec(template: VMSpec, upper: Path, folder: Path) -> VMSpec:
    """The template's kernel, initrd and layers, with a fresh copy of its writable layer."""
    folder.mkdir(parents=True, exist_ok=True)
    fresh = folder / "upper.ext4"
    # sparse, or a GiB of dirty page cache would be written back during the timed boot
    subprocess.run(["cp", "--sparse=always", str(upper), str(fresh)], check=True)
    drives = tuple(
        Drive(d.serial, fresh, read_only=False) if d.serial == "upper" else d
        for d in template.drives
    )
    return VMSpec(
        name=f"raw-{folder.name}", kernel=template.kernel, initrd=template.initrd,
        state_dir=folder, cpus=template.cpus, memory_mib=template.memory_mib,
        accel=template.accel, tsc_khz=template.tsc_khz, drives=drives,
    )  # fmt: skip


async def raw_boot(template: VMSpec, upper: Path, folder: Path) -> tuple[float, Any, Direct]:
    """QEMU started directly with the template's devices, to ``core.ready`` on the port."""
    spec = await asyncio.to_thread(fresh_spec, template, upper, folder)
    started = time.monotonic()
    process = await launch(spec)
    try:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(spec.agent_socket))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.002)
        direct = Direct(reader, writer)
        await asyncio.wait_for(direct.ready(), 120)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return time.monotonic() - started, process, direct


async def stop_raw(process: Any, direct: Direct) -> None:
    direct.writer.close()
    process.kill()
    await process.wait()


async def exec_median(run: Any, count: int) -> float:
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def in_process(args: argparse.Namespace, registry: Registry, agent: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ksb-bench-"))
    client = RegistryClient(RegistryConfig(plain_http=frozenset({registry.host})))
    policy = HostPathPolicy.of([])
    preparer = SandboxPreparer(
        images=ImageService(work / "images", client),
        rootfs=SandboxRootfs(work / "rootfs", policy),
        named=NamedVolumes(work / "volumes"),
        policy=policy,
        boot_image=initramfs.build(agent),
        tsc_khz=tsc_khz(),
        mirrors={"docker.io": registry.host},
    )
    runtime = Runtime(
        work / "state",
        vmm=QemuVMM(cgroups=CgroupManager(parent=CGROUP_PARENT)),
        preparer=preparer,
        emulation=True,
        timing=Timing(ready_timeout=180),
    )
    results: dict[str, Any] = {}
    try:
        first = runtime.put(desired())  # pulls the image once: not part of the comparison
        await until_running(first)
        # the raw boots use what the preparer made for this sandbox: kernel, initrd, layers,
        # and a copy of its writable layer taken after a clean stop
        spec = await preparer.build(first.desired, work / "template")
        await first.stop()
        upper = work / "template-upper.ext4"
        source = work / "rootfs" / first.uid / "upper.ext4"
        await asyncio.to_thread(
            subprocess.run, ["cp", "--sparse=always", str(source), str(upper)], check=True
        )
        await runtime.remove(first.uid)
        node_times, raw_times = [], []
        for i in range(args.boots):
            t = time.monotonic()
            supervisor = runtime.put(desired())
            await until_running(supervisor)
            node_times.append(time.monotonic() - t)
            await runtime.remove(supervisor.uid)
            seconds, process, direct = await raw_boot(spec, upper, work / f"raw{i}")
            await stop_raw(process, direct)
            raw_times.append(seconds)
            print(f"boot {i}: node {node_times[-1]:.2f}s raw {raw_times[-1]:.2f}s", flush=True)
        results["create_to_ready_s"] = statistics.median(node_times)
        results["raw_boot_to_ready_s"] = statistics.median(raw_times)
        results["create_over_raw"] = results["create_to_ready_s"] / results["raw_boot_to_ready_s"]

        supervisor = runtime.put(desired())
        await until_running(supervisor)
        seconds, process, direct = await raw_boot(spec, upper, work / "rawexec")
        try:
            async with await AgentClient.connect(supervisor.relay_socket) as relay_client:

                async def through_relay() -> None:
                    await relay_client.run(*TRUE)

                for _ in range(10):  # warm both paths
                    await through_relay()
                    await direct.run_true()
                relay_rtt = await exec_median(through_relay, args.execs)
                direct_rtt = await exec_median(direct.run_true, args.execs)
        finally:
            await stop_raw(process, direct)
        results["exec_rtt_relay_ms"] = relay_rtt * 1000
        results["exec_rtt_direct_ms"] = direct_rtt * 1000
        results["relay_over_direct"] = relay_rtt / direct_rtt

        idle = [supervisor]
        for _ in range(args.sandboxes - 1):
            other = runtime.put(desired())
            await until_running(other)
            idle.append(other)
        await asyncio.sleep(args.idle)
        charged, resident = [], []
        for s in idle:
            assert s.handle is not None
            group = s.handle.record.cgroup()
            if group is not None:
                charged.append(group.usage().memory_bytes)
            resident.append(rss(s.handle.record.pid))
        results["idle_sandboxes"] = len(idle)
        results["idle_cgroup_mib_per_sandbox"] = (
            statistics.mean(charged) / 2**20 if charged else None
        )
        results["idle_qemu_rss_mib_per_sandbox"] = statistics.mean(resident) / 2**20
    finally:
        for uid in list(runtime.sandboxes):
            await runtime.remove(uid)
        await client.close()
        CgroupManager(parent=CGROUP_PARENT).remove_parents()
        shutil.rmtree(work, ignore_errors=True)
    return results


async def restart(count: int, registry: Registry, agent: Path) -> dict[str, Any]:
    """Issue 5's restart check with ``count`` sandboxes and the node agent as a process."""
    work = Path(tempfile.mkdtemp(prefix="ksb-brs-"))
    token, port = uuid.uuid4().hex, free_port()
    (work / "token").write_text(token)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    argv = [
        sys.executable, "-m", "kubesandbox_node", "--node-name", "bench",
        "--state-dir", str(work / "state"), "--cache-dir", str(work / "cache"),
        "--listen", f"127.0.0.1:{port}", "--static-token-file", str(work / "token"),
        "--plain-http-registries", registry.host,
        "--registry-mirrors", f"docker.io={registry.host}",
        "--guest-agent", str(agent), "--allow-emulation", "--network", "none",
        "--cgroup-parent", CGROUP_PARENT, "--ready-timeout", "600",
    ]  # fmt: skip

    def start(n: int) -> subprocess.Popen[bytes]:
        log = (work / f"agent-{n}.log").open("wb")
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    async def wait_http(http: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with http.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)

    async def phases(http: aiohttp.ClientSession, uids: list[str]) -> list[str]:
        found = []
        for uid in uids:
            async with http.get(f"{url}/v1/sandboxes/{uid}", headers=headers) as r:
                found.append((await r.json())["phase"] if r.status == 200 else str(r.status))
        return found

    results: dict[str, Any] = {"sandboxes": count}
    process = start(1)
    uids = []
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http)
            t = time.monotonic()
            for _ in range(count):
                d = desired(128)
                uids.append(d.uid)
                body = d.model_dump(mode="json", by_alias=True)
                async with http.put(f"{url}/v1/sandboxes/{d.uid}", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
            while (current := await phases(http, uids)) != ["Running"] * count:
                if any(p in ("Crashed", "Failed") for p in current):
                    raise RuntimeError(f"phases: {current}")
                await asyncio.sleep(0.5)
            results["all_running_s"] = time.monotonic() - t
            before = set(qemu_processes(str(work)))
            process.send_signal(signal.SIGKILL)
            process.wait()
            results["qemu_alive_after_kill9"] = set(qemu_processes(str(work))) == before
            t = time.monotonic()
            process = start(2)
            await wait_http(http)
            results["readopt_s"] = time.monotonic() - t
            current = await phases(http, uids)
            results["running_after_restart"] = current.count("Running")
            results["same_qemu_pids"] = set(qemu_processes(str(work))) == before
            ok = 0
            for uid in uids:
                socket = work / "state" / "sandboxes" / uid / "agent.sock"
                async with await AgentClient.connect(socket) as client:
                    result = await client.run("echo", [uid])
                    ok += result.stdout == f"{uid}\n".encode()
            results["exec_ok_after_restart"] = ok
            for uid in uids:
                while True:
                    async with http.delete(f"{url}/v1/sandboxes/{uid}", headers=headers) as r:
                        if r.status == 204:
                            break
                    await asyncio.sleep(0.2)
            results["qemu_left_after_deletes"] = len(set(qemu_processes(str(work))))
            results["sandbox_dirs_left"] = len(list((work / "state" / "sandboxes").iterdir()))
    finally:
        process.terminate()
        process.wait()
        for pid in set(qemu_processes(str(work))):
            os.kill(pid, signal.SIGKILL)
        CgroupManager(parent=CGROUP_PARENT).remove_parents()
        shutil.rmtree(work, ignore_errors=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--sandboxes", type=int, default=3)
    parser.add_argument("--restart", type=int, default=0, help="sandboxes for the restart run")
    parser.add_argument("--skip-runtime", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ksb-bench-reg-"))
    registry = Registry(folder / "registry").start()
    try:
        layout = Layout(folder / "layout")
        layout.add_image("1.36", build_image([layer_tar(busybox_entries())]))
        registry.push(layout, "1.36", "library/busybox")
        agent = guest_agent_binary()
        results: dict[str, Any] = {}
        if not args.skip_runtime:
            results.update(await in_process(args, registry, agent))
        if args.restart:
            results["restart"] = await restart(args.restart, registry, agent)
        print(json.dumps(results, indent=2))
    finally:
        registry.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
