"""``python -m kubesandbox_node.bootimage``: build (or find in the cache) the boot image.

Prints ``KEY=path`` lines (kernel, initramfs, manifest) and, last, the initramfs path. The
agent binary comes from ``--agent``, else ``$KUBESANDBOX_GUEST_AGENT``, else the last stdout
line of ``guest-agent/build.sh`` (the guest agent's build contract).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from kubesandbox_node.bootimage import initramfs, kernel, standin


def agent_binary(repo: Path) -> Path:
    configured = os.environ.get("KUBESANDBOX_GUEST_AGENT")
    if configured:
        return Path(configured)
    script = repo / "guest-agent" / "build.sh"
    if not script.is_file():
        raise SystemExit(f"no --agent given and {script} does not exist")
    result = subprocess.run(
        ["bash", str(script)], cwd=repo, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    lines = result.stdout.decode().strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{script} failed (exit {result.returncode})")
    return Path(lines[-1].strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubesandbox_node.bootimage")
    parser.add_argument("--agent", type=Path, help="the static guest agent binary")
    parser.add_argument(
        "--standin",
        choices=["floor", "ready"],
        help="build a busybox stand-in image instead of the agent's",
    )
    parser.add_argument("--gzip", action="store_true", help="gzip the base initramfs")
    parser.add_argument(
        "--resolve-kernel",
        action="store_true",
        help="print the kernel package linux-image-cloud-amd64 points at now, and exit",
    )
    args = parser.parse_args(argv)
    if args.resolve_kernel:
        package, version = kernel.resolve_current()
        print(f"{package}={version} (pinned: {kernel.KERNEL_PACKAGE}={kernel.KERNEL_VERSION})")
        return 0
    if args.standin:
        init, extra = standin.entries(args.standin)
        image = initramfs.build(init, extra=extra, compress=args.gzip)
    else:
        repo = Path(__file__).resolve().parents[2]
        image = initramfs.build(args.agent or agent_binary(repo), compress=args.gzip)
    print(f"KERNEL={image.kernel}")
    print(f"RELEASE={image.release}")
    print(f"MODULES={','.join(image.modules)}")
    if image.missing_modules:
        print(f"MISSING_MODULES={','.join(image.missing_modules)}", file=sys.stderr)
    print(f"MANIFEST={image.initramfs.parent / 'manifest.json'}")
    print(f"INITRAMFS={image.initramfs}")
    print(image.initramfs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
