"""Boot benchmark: our guest agent against the floor of this machine, measured in one run.

    .venv/bin/python bench/boot.py [--boots 5] [--execs 50] [--agent PATH] [--compare-gzip]

- floor: the same kernel and initramfs size class, ``/init`` a busybox script that only writes
  a marker to the serial console (``kubesandbox_node.bootimage.standin`` "floor");
- agent: the real guest agent to ``core.ready`` through the relay (or, without the agent, the
  busybox "ready" stand-in that loads the modules and writes a canned ready frame);
- exec round trip of ``true`` through relay + agent (median of ``--execs``), and the agent's
  RSS in the guest (``VmRSS`` of the agent process).
Boots alternate floor/agent so that machine load hits both alike; medians are reported with
ratios. Results go in docs/guest-agent-bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended, not prepended: the repo's operator/ must not shadow

from kubesandbox_node.bootimage import cpio, initramfs, standin  # noqa: E402
from kubesandbox_node.vm import BootError, VMSpec, boot, launch  # noqa: E402
from kubesandbox_node.vm.bootconfig import BootConfig, OverlayRoot  # noqa: E402
from kubesandbox_node.vm.host import tsc_khz  # noqa: E402
from kubesandbox_protocol import AgentClient  # noqa: E402
from tests.support.images import cached_busybox_layer, ext4_upper  # noqa: E402
from tests.support.vms import AgentUnavailableError, guest_agent_binary  # noqa: E402

CONFIG = BootConfig(
    hostname="bench",
    root=OverlayRoot(layers=["layer0"], upper="upper"),
    env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
)


def _spec(image: initramfs.BootImage, directory: Path, with_disks: bool) -> VMSpec:
    from kubesandbox_node.vm import Drive

    drives: tuple[Drive, ...] = ()
    if with_disks:
        upper = ext4_upper(directory / "upper.ext4", 256)
        drives = (Drive("layer0", cached_busybox_layer()), Drive("upper", upper, read_only=False))
    initrd = initramfs.write_initrd(image, CONFIG, directory / "initrd.cpio")
    return VMSpec(
        name=directory.name,
        kernel=image.kernel,
        initrd=initrd,
        state_dir=directory,
        tsc_khz=tsc_khz(),
        drives=drives,
    )


async def floor_boot(image: initramfs.BootImage) -> float:
    """Seconds from QEMU start to the floor marker on the serial console."""
    directory = Path(tempfile.mkdtemp(prefix="ksb-bench-"))
    try:
        spec = _spec(image, directory, with_disks=False)
        started = time.monotonic()
        process = await launch(spec)
        try:
            reader, writer = await _connect(spec.console_socket, process)
            seen = b""
            async with asyncio.timeout(120):
                while standin.FLOOR_MARKER.encode() not in seen:
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise RuntimeError("console closed before the floor marker")
                    seen = seen[-256:] + chunk
            elapsed = time.monotonic() - started
            writer.close()
            return elapsed
        finally:
            process.kill()
            await process.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _connect(
    path: Path, process: asyncio.subprocess.Process
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    for _ in range(10_000):
        with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
            return await asyncio.open_unix_connection(str(path))
        if process.returncode is not None:
            break
        await asyncio.sleep(0.002)
    raise RuntimeError(f"could not connect to {path}")


async def agent_boot(
    image: initramfs.BootImage, execs: int, with_disks: bool
) -> tuple[float, list[float], int | None, dict[str, int]]:
    """Seconds to core.ready, exec round trips of ``true``, agent RSS in KiB, ready payload."""
    directory = Path(tempfile.mkdtemp(prefix="ksb-bench-"))
    try:
        spec = _spec(image, directory, with_disks)
        vm = await boot(spec, directory / "agent.sock", ready_timeout=120)
        try:
            rtts: list[float] = []
            rss: int | None = None
            if execs:
                async with await AgentClient.connect(directory / "agent.sock") as client:
                    for _ in range(execs):
                        t0 = time.perf_counter()
                        await client.run("/bin/true")
                        rtts.append(time.perf_counter() - t0)
                    # the agent is PID 1 (no init handoff in this VM)
                    status = await client.run("/bin/grep", ["VmRSS", "/proc/1/status"])
                    fields = status.stdout.split()
                    rss = int(fields[1]) if len(fields) >= 2 else None
            timings = {k: int(v) for k, v in vm.ready.items() if k.endswith("_ns")}
            return vm.boot_seconds, rtts, rss, timings
        finally:
            await vm.kill()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--agent", type=Path)
    parser.add_argument("--compare-gzip", action="store_true")
    args = parser.parse_args()

    floor_init, floor_extra = standin.entries("floor")
    floor = initramfs.build(floor_init, extra=floor_extra)
    agent: Path | bytes
    extra: list[cpio.Entry] = []
    label = "guest agent"
    try:
        agent = args.agent or guest_agent_binary()
    except AgentUnavailableError as exc:
        print(f"guest agent unavailable ({exc}); measuring the busybox 'ready' stand-in")
        agent, extra = standin.entries("ready")
        label = "stand-in"
    real_agent = label == "guest agent"
    image = initramfs.build(agent, extra=extra)

    floors: list[float] = []
    readies: list[float] = []
    rtts: list[float] = []
    rss: int | None = None
    guest_start: list[float] = []
    guest_init: list[float] = []
    guest_ready: list[float] = []
    for i in range(args.boots):
        floors.append(await floor_boot(floor))
        try:
            ready, round_trips, rss_kib, timings = await agent_boot(
                image, args.execs if real_agent and i == 0 else 0, with_disks=real_agent
            )
        except BootError as exc:
            print(f"boot {i} failed: {exc.reason}\n{exc.console[-1500:]}")
            return 1
        readies.append(ready)
        guest_start.append(timings.get("boot_time_ns", 0) / 1e9)
        guest_init.append(timings.get("init_time_ns", 0) / 1e9)
        guest_ready.append(timings.get("ready_time_ns", 0) / 1e9)
        rtts += round_trips
        rss = rss_kib if rss_kib is not None else rss
        print(f"boot {i}: floor {_ms(floors[-1])}, {label} ready {_ms(ready)}")

    floor_med, ready_med = statistics.median(floors), statistics.median(readies)
    print(f"\nfloor (busybox marker on serial): median {_ms(floor_med)} of {len(floors)}")
    print(f"{label} to core.ready: median {_ms(ready_med)} of {len(readies)}")
    print(
        f"ratio ready/floor: {ready_med / floor_med:.2f}  (overhead {_ms(ready_med - floor_med)})"
    )
    if real_agent:
        print(
            f"guest boot clock (median): agent started {_ms(statistics.median(guest_start))}, "
            f"its setup took {_ms(statistics.median(guest_init))}, "
            f"ready at {_ms(statistics.median(guest_ready))}"
        )
    if rtts:
        print(
            f"exec round trip of /bin/true: median {_ms(statistics.median(rtts))}, "
            f"p90 {_ms(sorted(rtts)[int(len(rtts) * 0.9)])} over {len(rtts)}"
        )
    if rss is not None:
        print(f"agent RSS in the guest: {rss} KiB")

    if args.compare_gzip:
        init, extra2 = standin.entries("ready")
        raw = initramfs.build(init, extra=extra2, compress=False)
        gz = initramfs.build(init, extra=extra2, compress=True)
        raw_t: list[float] = []
        gz_t: list[float] = []
        for _ in range(args.boots):
            raw_t.append((await agent_boot(raw, 0, with_disks=False))[0])
            gz_t.append((await agent_boot(gz, 0, with_disks=False))[0])
        raw_kib, gz_kib = raw.initramfs.stat().st_size >> 10, gz.initramfs.stat().st_size >> 10
        print(f"\ninitramfs raw ({raw_kib} KiB): median {_ms(statistics.median(raw_t))}")
        print(f"initramfs gzip ({gz_kib} KiB): median {_ms(statistics.median(gz_t))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
