"""``kubesandbox-devenv up | down | status | images``: the embedded environment behind ``make up``.

The environment is a list of components, each able to start (idempotently), say whether it is
alive, and stop. ``up`` starts them in order and leaves them running detached (their pid files
are in ``.kubesandbox/run/``); a second ``up`` reuses what runs, restarts what died and upgrades
what changed. ``down`` stops them in reverse order. The order is the install a platform team
does (:mod:`.installed`): the control plane, ``kubectl`` and ``helm``, the CRDs, the local
registry, the Dockerfile's images built from this tree and pushed there, a real kubelet node,
``helm upgrade --install`` of the chart, and the demo ServiceAccount.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubesandbox_devenv import images, installed, services, timing
from kubesandbox_devenv.binaries import (
    REPO_ROOT,
    Binaries,
    BinariesMissingError,
    NodeBinaries,
    ensure_binaries,
    ensure_helm,
    ensure_node_binaries,
    helm_binary,
)
from kubesandbox_devenv.controlplane import ControlPlane, KubectlError
from kubesandbox_devenv.helm import Helm, HelmError
from kubesandbox_devenv.probes import ComponentFailedError
from kubesandbox_devenv.realnode import RealNode, RealNodeError

DEFAULT_STATE_DIR = REPO_ROOT / ".kubesandbox"
DEFAULT_CRDS_DIR = REPO_ROOT / "crds"


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    crds_dir: Path
    timeout: float


class EnvironmentComponent(Protocol):
    """One piece of the environment as ``up``/``down``/``status`` see it."""

    name: str

    def start(self) -> str:
        """Make it run (reusing what already runs); return a one-line summary."""

    def is_alive(self) -> bool: ...

    def stop(self) -> None: ...


class ControlPlaneComponent:
    name = "control-plane"

    def __init__(self, settings: Settings) -> None:
        self.control_plane = ControlPlane(
            settings.state_dir,
            real_node=True,
            detached=True,
            start_timeout=settings.timeout,
            binaries=Binaries.in_cache(),
        )

    def start(self) -> str:
        report = self.control_plane.start()
        took = ", ".join(f"{name} {secs:.1f}s" for name, secs in report.components.items())
        return f"ready in {report.total:.1f}s ({took or 'all were running'})"

    def is_alive(self) -> bool:
        return all(pid is not None for pid in self.control_plane.status().values())

    def stop(self) -> None:
        self.control_plane.stop()

    def describe(self) -> list[str]:
        return [
            f"  {name:<24} {'pid ' + str(pid) if pid else 'not running'}"
            for name, pid in self.control_plane.status().items()
        ]


class CrdsComponent:
    """Every CRD manifest in ``crds/``, applied and Established."""

    name = "crds"

    def __init__(self, settings: Settings, control_plane: ControlPlane) -> None:
        self.directory = settings.crds_dir
        self.control_plane = control_plane

    def start(self) -> str:
        if not self.directory.is_dir():
            return f"none ({self.directory} does not exist yet)"
        installed = self.control_plane.install_crds(self.directory)
        return ", ".join(path.name for path in installed) or f"none in {self.directory}"

    def is_alive(self) -> bool:
        files = self.control_plane.crd_files(self.directory)
        if not files:
            return True
        if self.control_plane.status().get("kube-apiserver") is None:
            return False
        file_args = [arg for path in files for arg in ("-f", str(path))]
        return self.control_plane.kubectl("get", *file_args, check=False).returncode == 0

    def stop(self) -> None:
        """CRDs live in etcd; they go when the control plane's data does."""


@dataclass(frozen=True)
class Environment:
    """The components of ``make up``, in start order, and the ones ``up`` reports on."""

    components: list[EnvironmentComponent]
    control_plane: ControlPlaneComponent
    release: installed.ReleaseComponent
    access: services.AccessComponent
    dirs: installed.NodeDirs


def environment(settings: Settings) -> Environment:
    control_plane = ControlPlaneComponent(settings)
    plane = control_plane.control_plane
    paths = services.Paths(settings.state_dir)
    bin_dir = settings.state_dir / "bin"
    helm = Helm(helm_binary(), home=settings.state_dir / "helm", kubeconfig=plane.kubeconfig)
    registry = services.RegistryService(paths)
    node = RealNode(plane)
    built = installed.ImagesComponent(registry)
    dirs = installed.NodeDirs()
    release = installed.ReleaseComponent(helm, plane, node, built, registry, dirs)
    access = services.AccessComponent(paths, plane, apply_rbac=False)
    components: list[EnvironmentComponent] = [
        control_plane,
        installed.LinkComponent("kubectl", bin_dir / "kubectl", plane.binaries.kubectl),
        installed.LinkComponent("helm", bin_dir / "helm", helm.binary),
        CrdsComponent(settings, plane),
        registry,
        built,
        installed.RealNodeComponent(node, registry),
        release,
        access,
    ]
    return Environment(components, control_plane, release, access, dirs)


def up(settings: Settings) -> int:
    if Binaries.in_cache().missing() or NodeBinaries.in_cache().missing():
        print(
            "kubesandbox-devenv: building the control-plane and node binaries once for this "
            "machine (about 30 minutes on 2 cores)...",
            flush=True,
        )
        ensure_binaries(show_progress=True)
        ensure_node_binaries(show_progress=True)
    ensure_helm(show_progress=True)
    env = environment(settings)
    for component in env.components:
        print(f"kubesandbox-devenv: {component.name}: {component.start()}", flush=True)
    gateway_url = settings.state_dir / "gateway-url"
    gateway_url.write_text(env.release.gateway_url + "\n")
    print("kubesandbox-devenv: demo: applying examples/hello.yaml and waiting for Running...")
    output = services.demo(env.control_plane.control_plane, env.dirs.relay_socket)
    kubeconfig = settings.state_dir / "kubeconfig"
    bin_dir = settings.state_dir / "bin"
    namespace, account, role = services.DEMO_ACCOUNT
    print(
        "\nThe sandbox `hello` is Running. A command inside its VM printed:\n\n"
        + "".join(f"    {line}\n" for line in output.splitlines())
        + "\nkubesandbox is installed with Helm (release kubesandbox in kubesandbox-system) on "
        "a node with a real kubelet; the operator, the gateway and the node agent are Pods.\n"
        "The environment is up and stays up. To use it:\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f'  export PATH="{bin_dir}:$PATH"\n'
        "  kubectl get sbx                           # Phase, Node, Image, CPUs, Memory, Age\n"
        "  kubectl describe sbx hello                # conditions and events\n"
        "  kubectl get pods -n kubesandbox-system    # the operator, gateway and node agent\n"
        "  helm status kubesandbox -n kubesandbox-system\n"
        "  kubectl apply -f examples/scripts.yaml    # more examples in examples/\n"
        '  kubectl patch sbx hello --type merge -p \'{"spec":{"lifecycle":{"state":"Stopped"}}}\'\n'
        f"\nThe gateway serves the microsandbox cloud API at {env.release.gateway_url}. Drive it "
        f"with the\nunmodified microsandbox SDK as ServiceAccount {namespace}/{account} ({role} in "
        f"{namespace}):\n"
        f"  export MSB_BACKEND=cloud MSB_API_URL=$(cat {gateway_url})/ns/{namespace} "
        f"MSB_API_KEY=$(cat {env.access.token_file})\n"
        f"  {sys.executable} {REPO_ROOT / 'examples' / 'sdk' / 'hello_sdk.py'}\n"
        f"The same identity for kubectl: KUBECONFIG={env.access.kubeconfig_file}\n"
        "Stop it with `make down`."
    )
    return 0


def down(settings: Settings, *, purge: bool) -> int:
    env = environment(settings)
    # The VMs are no Pods' processes: they go the normal way, while the operator and the node
    # agent still run, before the node stops.
    services.remove_all_sandboxes(env.control_plane.control_plane)
    for component in reversed(env.components):
        component.stop()
        print(f"kubesandbox-devenv: {component.name}: stopped")
    if killed := services.kill_leftover_vms(env.dirs.state):
        print(f"kubesandbox-devenv: killed {killed} leftover VM(s)")
    if purge and settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)
        print(f"kubesandbox-devenv: removed {settings.state_dir}")
    return 0


def status(settings: Settings) -> int:
    healthy = True
    for component in environment(settings).components:
        alive = component.is_alive()
        healthy = healthy and alive
        print(f"{component.name:<26} {'ok' if alive else 'DOWN'}")
        if isinstance(component, ControlPlaneComponent):
            print("\n".join(component.describe()))
    return 0 if healthy else 1


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One ``up`` or ``down`` at a time per state dir (the checkout is shared)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (state_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubesandbox-devenv", description="The embedded kubesandbox environment."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("KUBESANDBOX_STATE_DIR", DEFAULT_STATE_DIR)),
        help="where the environment keeps its PKI, data, logs and pid files (default: %(default)s)",
    )
    parser.add_argument(
        "--crds", type=Path, default=DEFAULT_CRDS_DIR, help="CRD directory (default: %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start everything that is not running")
    up_parser.add_argument("--timeout", type=float, default=120.0, help="start bound, seconds")
    down_parser = commands.add_parser("down", help="stop everything `up` started")
    down_parser.add_argument(
        "--purge", action="store_true", help="also delete the state dir (PKI, etcd data, logs)"
    )
    commands.add_parser("status", help="show what runs; exit 1 when something is down")
    images_parser = commands.add_parser(
        "images", help="build the Dockerfile's images (cached by content) and push them"
    )
    images_parser.add_argument(
        "--registry",
        help="host:port of a plain-HTTP registry (default: the one in <state-dir>/registry)",
    )
    images_parser.add_argument(
        "--force", action="store_true", help="rebuild without the layer cache and push again"
    )
    measure_parser = commands.add_parser(
        "measure", help="time start and stop of fresh control planes (state dir unused)"
    )
    measure_parser.add_argument("--runs", type=int, default=5)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings(
        state_dir=args.state_dir.resolve(),
        crds_dir=args.crds.resolve(),
        timeout=getattr(args, "timeout", 120.0),
    )
    try:
        if args.command == "up":
            with state_lock(settings.state_dir):
                return up(settings)
        if args.command == "down":
            with state_lock(settings.state_dir):
                return down(settings, purge=args.purge)
        if args.command == "images":
            return images.main(args, settings.state_dir)
        if args.command == "measure":
            print(timing.report(timing.measure(args.runs)))
            return 0
        return status(settings)
    except (
        ComponentFailedError,
        BinariesMissingError,
        KubectlError,
        services.ServiceError,
        images.ImageBuildError,
        HelmError,
        RealNodeError,
    ) as error:
        print(f"kubesandbox-devenv: {args.command} failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
