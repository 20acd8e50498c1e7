"""The control plane at scale: N Sandboxes that no node can take, and an operator that is quiet.

    .venv/bin/python bench/scale.py --count 1000 --baseline-ref 5541648   # old operator too
    .venv/bin/python bench/scale.py --count 10000 --rounds 1
    .venv/bin/python bench/scale.py --count 1000 --installed   # the operator of the Helm install

A real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, one
registered Node) in a temporary directory, the CRDs, and the operator as its own process.
Every Sandbox carries a ``nodeSelector`` that matches no node, so its Pod stays Pending
(``Unschedulable``): no node agent and no VM is involved, only the control plane and the
operator. For each operator measured (``--baseline-ref REV`` first runs the operator of that
git revision the same way, for ratios measured in the same run), then for each round:

- an idle window with no Sandbox (the control plane's own traffic: Leases, controllers);
- ``kubectl apply`` of one List of N Sandboxes; how long kubectl took, and the time from the
  apply until all N sandbox Pods exist (counted with ``limit=1`` lists, ``remainingItemCount``)
  and until every Sandbox says ``Scheduled=False Unschedulable`` (the operator's last write);
- an idle window (``--idle`` seconds) with N Sandboxes waiting: the operator's CPU (from
  ``/proc/<pid>/stat``) as % of one core, the apiserver's requests by verb and resource from its
  ``apiserver_request_total`` (diffed; all clients, the baseline window says what is not ours),
  the operator's and the apiserver's resident memory;
- one ``deletecollection`` of the Sandboxes; the time until no Sandbox and no sandbox Pod is
  left, and the operator's RSS afterwards (does the memory come back?).

The bench's own requests (the counting lists) happen outside the idle windows.

``--installed`` measures the system users run instead: everything ``make up`` installs (the
chart on the real kubelet node: the operator's Pod, the gateway's and the node agent's, all
watching Sandboxes), and the operator measured from outside, as the process in its Pod's
container (its pid from the node's CRI). The apiserver's counts then include the
gateway's and the node agent's requests too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from apply import (  # bench/apply.py: this folder is on sys.path
    cpu_seconds,
    requests_by_verb,
    rss_mib,
    sandbox_list,
)

from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.installed import InstalledSystem, installed_system

SYSTEM = "kubesandbox-system"
NAMESPACE = "scale"
NOWHERE = {"kubesandbox.dev/scale-bench": "no-such-node"}
READ_VERBS = ("GET", "LIST", "WATCH")
GROUP_PATH = "/apis/kubesandbox.dev/v1alpha1"


def proc_cpu_seconds(pid: int) -> float:
    return cpu_seconds([pid])


@dataclass
class Window:
    """One idle window: what the apiserver served and what the operator used."""

    seconds: float
    requests: Counter[tuple[str, str]]
    operator_cpu: float
    apiserver_cpu: float

    def rate(self, verbs: tuple[str, ...] | None = None, resource: str | None = None) -> float:
        total = sum(
            n
            for (verb, res), n in self.requests.items()
            if (verbs is None or verb in verbs) and (resource is None or res == resource)
        )
        return total / self.seconds

    def report(self, title: str) -> list[str]:
        lines = [
            f"{title}: operator CPU {100 * self.operator_cpu / self.seconds:.2f} % of a core, "
            f"apiserver CPU {100 * self.apiserver_cpu / self.seconds:.1f} %, "
            f"requests {self.rate():.2f}/s (reads {self.rate(READ_VERBS):.2f}/s)"
        ]
        rest = Counter[str]()
        for (verb, resource), count in sorted(self.requests.items(), key=lambda kv: -kv[1]):
            if count > 2:
                lines.append(f"    {verb:<7} {resource:<28} {count / self.seconds:8.3f}/s")
            elif count:
                rest[verb] += count
        for verb, count in sorted(rest.items()):
            # The controller-manager's informers re-watch each resource every 5-10 minutes.
            lines.append(f"    {verb:<7} {'(others, 1-2 each)':<28} {count / self.seconds:8.3f}/s")
        return lines


@dataclass
class Round:
    count: int
    kubectl_seconds: float = 0.0
    pods_seconds: float = 0.0
    settled_seconds: float = 0.0
    idle: Window | None = None
    rss_waiting: float = 0.0
    rss_peak: float = 0.0
    apiserver_rss: float = 0.0
    delete_seconds: float = 0.0
    sandboxes_gone_seconds: float = 0.0
    rss_after_delete: float = 0.0


@dataclass
class OperatorRun:
    label: str
    rss_start: float = 0.0
    empty: Window | None = None
    rounds: list[Round] = field(default_factory=list)


class Operator:
    """The operator as its own process, from this checkout or from a git revision."""

    def __init__(self, plane: ControlPlane, state: Path, revision: str | None) -> None:
        self.plane, self.state, self.revision = plane, state, revision
        self.log = state / f"operator-{revision or 'current'}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        token = self.state / "token"
        token.write_text("scale-bench")  # no node agent is ever asked anything here
        args = ["--kubeconfig", str(self.plane.kubeconfig), "--namespace", SYSTEM]
        args += ["--node-agent-token-file", str(token)]
        if self.revision is None:
            return [str(Path(sys.executable).with_name("kubesandbox-operator")), *args], env
        # That revision's operator package, first on the path (a regular package wins over
        # the namespace package of the checkout); everything else from the checkout.
        root = self.state / f"rev-{self.revision}"
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", self.revision, "operator"],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        (root / "operator").rename(root / "kubesandbox_operator")
        (root / "kubesandbox_operator" / "__init__.py").touch()
        env["PYTHONPATH"] = str(root)
        code = "import sys; from kubesandbox_operator.main import main; sys.exit(main())"
        return [sys.executable, "-c", code, *args], env

    def start(self) -> None:
        argv, env = self.command()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        wanted = "leader.acquired" if self.revision else "controller.synced"
        deadline = time.monotonic() + 60
        while wanted not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the operator did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        time.sleep(2)  # Kopf's first list of (no) Sandboxes

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class InstalledOperator:
    """The operator of the Helm release: its container's process on this (the only) node.
    Started and stopped by the install, not by the bench."""

    def __init__(self, system: InstalledSystem) -> None:
        self.system = system
        self._pid = 0

    def start(self) -> None:
        self._pid = self.system.container_pid("operator")
        time.sleep(2)

    @property
    def pid(self) -> int:
        return self._pid

    def stop(self) -> None:
        pass


Measured = Operator | InstalledOperator


class Bench:
    def __init__(
        self,
        plane: ControlPlane,
        state: Path,
        idle: float,
        *,
        installed: InstalledSystem | None = None,
    ) -> None:
        self.plane, self.state, self.idle, self.installed = plane, state, idle, installed
        self.kubectl_binary = str(plane.binaries.kubectl)
        from kubernetes import client  # the bench's own reads, outside the idle windows

        self._api = plane.api_client().__enter__()
        self.core = client.CoreV1Api(self._api)
        self.custom = client.CustomObjectsApi(self._api)

    def delete_all(self) -> None:
        """``deletecollection`` until one returns. With 10,000 the first one outlasts the
        apiserver's 60 s request timeout, and the apiserver stops marking Sandboxes for
        deletion when it gives up (6,704 of 10,000 were marked): ask again for the rest."""
        env = dict(os.environ, KUBECONFIG=str(self.plane.kubeconfig))
        path = f"{GROUP_PATH}/namespaces/{NAMESPACE}/sandboxes"
        while True:
            done = subprocess.run(
                [self.kubectl_binary, "delete", "--raw", path],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if not done.returncode:
                return
            progress(f"kubectl delete --raw: {done.stderr.strip()[:200]}; again")

    def sandboxes(self, **params: Any) -> dict[str, Any]:
        listed = self.custom.list_namespaced_custom_object(
            "kubesandbox.dev", "v1alpha1", NAMESPACE, "sandboxes", **params
        )
        return cast(dict[str, Any], listed)

    def pod_count(self) -> int:
        """The Pods in the bench's namespace (only sandbox Pods live there). No label selector:
        the apiserver leaves ``remainingItemCount`` out of a selected list."""
        listed = self.core.list_namespaced_pod(NAMESPACE, limit=1)
        remaining = listed.metadata.remaining_item_count if listed.metadata else 0
        return len(listed.items) + int(remaining or 0)

    def sandbox_count(self) -> int:
        listed = self.sandboxes(limit=1)
        return len(listed["items"]) + int(listed["metadata"].get("remainingItemCount") or 0)

    def unsettled(self) -> int:
        """Sandboxes whose status does not say Unschedulable yet (pages of 500)."""
        waiting, token = 0, None
        while True:
            listed = self.sandboxes(limit=500, _continue=token)
            for item in listed["items"]:
                conditions = (item.get("status") or {}).get("conditions") or []
                if not any(c.get("reason") == "Unschedulable" for c in conditions):
                    waiting += 1
            token = listed["metadata"].get("continue")
            if not token:
                return waiting

    def window(self, operator: Measured, seconds: float) -> Window:
        apiserver = self.plane.status()["kube-apiserver"]
        assert apiserver is not None
        before = requests_by_verb(self.plane)
        cpu, api_cpu = proc_cpu_seconds(operator.pid), proc_cpu_seconds(apiserver)
        began = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - began
        after = requests_by_verb(self.plane)
        return Window(
            seconds=elapsed,
            requests=after - before,
            operator_cpu=proc_cpu_seconds(operator.pid) - cpu,
            apiserver_cpu=proc_cpu_seconds(apiserver) - api_cpu,
        )

    def manifest(self, count: int) -> Path:
        names = [f"waiting-{index}" for index in range(count)]
        path = self.state / f"sandboxes-{count}.json"
        path.write_text(
            sandbox_list(
                names, {"cpus": 1, "memory": 128, "nodeSelector": NOWHERE}, namespace=NAMESPACE
            )
        )
        return path

    def round(self, operator: Measured, count: int) -> Round:
        result = Round(count)
        manifest = self.manifest(count)
        env = dict(os.environ, KUBECONFIG=str(self.plane.kubeconfig))
        began = time.monotonic()
        apply = subprocess.Popen(
            [self.kubectl_binary, "apply", "-f", str(manifest)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        while self.pod_count() < count:
            result.rss_peak = max(result.rss_peak, rss_mib(operator.pid))
            if apply.poll() is not None and not result.kubectl_seconds:
                result.kubectl_seconds = time.monotonic() - began
                if apply.returncode != 0:
                    raise SystemExit(f"kubectl apply failed: {apply.stderr.read()!r}")  # type: ignore[union-attr]
            if time.monotonic() - began > 1800:
                raise SystemExit(f"only {self.pod_count()} of {count} Pods after 30 min")
            time.sleep(1.0)
        result.pods_seconds = time.monotonic() - began
        progress(f"all {count} Pods exist after {result.pods_seconds:.1f} s")
        apply.wait()
        result.kubectl_seconds = result.kubectl_seconds or result.pods_seconds
        while self.unsettled():
            result.rss_peak = max(result.rss_peak, rss_mib(operator.pid))
            if time.monotonic() - began > 2400:
                raise SystemExit(f"{self.unsettled()} Sandboxes still not Unschedulable")
            time.sleep(5.0)
        result.settled_seconds = time.monotonic() - began
        progress(f"all Unschedulable after {result.settled_seconds:.1f} s; idle window")
        time.sleep(10)  # the last Events and Kopf's bookkeeping
        result.idle = self.window(operator, self.idle)
        result.rss_waiting = rss_mib(operator.pid)
        print("\n".join(result.idle.report(f"  idle with {count} waiting")), flush=True)
        progress(f"operator RSS waiting {result.rss_waiting:.1f} MiB (peak {result.rss_peak:.1f})")
        apiserver = self.plane.status()["kube-apiserver"]
        result.apiserver_rss = rss_mib(apiserver) if apiserver else 0.0
        progress("deleting")
        began = time.monotonic()
        self.delete_all()
        while self.sandbox_count() or self.pod_count():
            if not result.sandboxes_gone_seconds and not self.sandbox_count():
                result.sandboxes_gone_seconds = time.monotonic() - began
            if time.monotonic() - began > 1800:
                raise SystemExit("Sandboxes or Pods still there 30 min after the delete")
            time.sleep(1.0)
        result.delete_seconds = time.monotonic() - began
        time.sleep(15)  # Kopf's per-object workers end after 5 s idle
        result.rss_after_delete = rss_mib(operator.pid)
        return result

    def measure(self, label: str, revision: str | None, count: int, rounds: int) -> OperatorRun:
        operator: Measured = (
            InstalledOperator(self.installed)
            if self.installed is not None
            else Operator(self.plane, self.state, revision)
        )
        operator.start()
        progress(f"{label} started; idle window without Sandboxes")
        run = OperatorRun(label, rss_start=rss_mib(operator.pid))
        try:
            run.empty = self.window(operator, self.idle)
            for _ in range(rounds):
                run.rounds.append(self.round(operator, count))
                print_run(run)
        finally:
            operator.stop()
        return run


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def print_run(run: OperatorRun) -> None:
    print(f"\n== {run.label}: operator RSS at start {run.rss_start:.1f} MiB", flush=True)
    if run.empty is not None:
        print("\n".join(run.empty.report("idle, no Sandbox")))
    for index, result in enumerate(run.rounds, 1):
        print(
            f"round {index}: {result.count} Sandboxes: kubectl apply "
            f"{result.kubectl_seconds:.1f} s,"
            f" all Pods after {result.pods_seconds:.1f} s, all Unschedulable after "
            f"{result.settled_seconds:.1f} s; delete of all: Sandboxes gone after "
            f"{result.sandboxes_gone_seconds or result.delete_seconds:.1f} s, Pods too after "
            f"{result.delete_seconds:.1f} s"
        )
        print(
            f"  operator RSS: peak {result.rss_peak:.1f} MiB, waiting {result.rss_waiting:.1f} MiB,"
            f" after the delete {result.rss_after_delete:.1f} MiB; apiserver RSS "
            f"{result.apiserver_rss:.0f} MiB"
        )
        if result.idle is not None:
            print("\n".join(result.idle.report(f"  idle with {result.count} waiting")))
    sys.stdout.flush()


def compare(old: OperatorRun, new: OperatorRun) -> None:
    if not (old.rounds and new.rounds and old.rounds[0].idle and new.rounds[0].idle):
        return
    o, n = old.rounds[0], new.rounds[0]
    assert o.idle is not None
    assert n.idle is not None

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "inf"

    print(f"\n== {old.label} / {new.label}, same run, {o.count} waiting:")
    print(f"  all Pods after:     {o.pods_seconds:7.1f} s / {n.pods_seconds:7.1f} s")
    print(
        f"  idle operator CPU:  {100 * o.idle.operator_cpu / o.idle.seconds:7.2f} % / "
        f"{100 * n.idle.operator_cpu / n.idle.seconds:7.2f} %  "
        f"({ratio(o.idle.operator_cpu, n.idle.operator_cpu)})"
    )
    print(
        f"  idle reads/s:       {o.idle.rate(READ_VERBS):7.2f} / {n.idle.rate(READ_VERBS):7.2f}  "
        f"(baseline without Sandboxes {old.empty.rate(READ_VERBS) if old.empty else 0:.2f} / "
        f"{new.empty.rate(READ_VERBS) if new.empty else 0:.2f})"
    )
    print(f"  RSS waiting:        {o.rss_waiting:7.1f} / {n.rss_waiting:7.1f} MiB")
    print(f"  RSS after delete:   {o.rss_after_delete:7.1f} / {n.rss_after_delete:7.1f} MiB")
    print(f"  delete of all:      {o.delete_seconds:7.1f} s / {n.delete_seconds:7.1f} s")


@contextmanager
def control_plane(count: int) -> Iterator[tuple[ControlPlane, Path, InstalledSystem | None]]:
    state = Path(tempfile.mkdtemp(prefix="ksb-scale-", dir="/tmp"))
    try:
        with ControlPlane(state / "plane", nodes=1, binaries=ensure_binaries()) as plane:
            plane.install_crds(REPO_ROOT / "crds")
            plane.kubectl("create", "namespace", SYSTEM)
            bench_namespace(plane)
            yield plane, state, None
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def installed_plane() -> Iterator[tuple[ControlPlane, Path, InstalledSystem | None]]:
    """What ``make up`` installs (the chart on the real node), for ``--installed``."""
    state = Path(tempfile.mkdtemp(prefix="ksb-scale-", dir="/tmp"))
    try:
        with installed_system("ksbs-", cleanup_timeout=900) as system:
            bench_namespace(system.plane)
            yield system.plane, state, system
    finally:
        shutil.rmtree(state, ignore_errors=True)


def bench_namespace(plane: ControlPlane) -> None:
    plane.kubectl("create", "namespace", NAMESPACE)
    deadline = time.monotonic() + 60
    while plane.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode:
        if time.monotonic() > deadline:
            raise SystemExit("no default ServiceAccount in the bench namespace")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="Sandboxes per round")
    parser.add_argument("--rounds", type=int, default=2, help="apply + delete rounds")
    parser.add_argument("--idle", type=float, default=60, help="seconds of each idle window")
    parser.add_argument(
        "--baseline-ref", default=None, help="also measure the operator of this git revision"
    )
    parser.add_argument(
        "--installed",
        action="store_true",
        help="measure the operator of the Helm install on the real node (make up's system)",
    )
    args = parser.parse_args()
    if args.installed and args.baseline_ref:
        parser.error("--baseline-ref runs an operator process of its own: not with --installed")
    system = installed_plane() if args.installed else control_plane(args.count)
    with system as (plane, state, installed):
        bench = Bench(plane, state, args.idle, installed=installed)
        old = None
        if args.baseline_ref:
            old = bench.measure(
                f"operator at {args.baseline_ref}", args.baseline_ref, args.count, 1
            )
        label = "the installed operator" if args.installed else "this operator"
        new = bench.measure(label, None, args.count, args.rounds)
        if old is not None:
            compare(old, new)


if __name__ == "__main__":
    main()
