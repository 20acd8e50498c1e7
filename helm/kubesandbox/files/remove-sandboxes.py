# Run by the chart's pre-delete hook (templates/uninstall-hook.yaml) with `python3 -c`: deletes
# every SandboxPool (first: a pool would boot new members), every Sandbox and every
# SandboxSnapshot and waits until all are gone, while the operator and the node agents still
# run, so that `helm uninstall` leaves no VM, network namespace, sandbox directory or snapshot
# copy on any node (and no snapshot held by a finalizer nobody would remove).
# Standard library only. In the Job it uses its Pod's ServiceAccount; KUBESANDBOX_API,
# KUBESANDBOX_TOKEN_FILE and KUBESANDBOX_CA_FILE override that (the chart's tests run it so).
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
env = os.environ.get
api = env("KUBESANDBOX_API") or "https://{}:{}".format(
    env("KUBERNETES_SERVICE_HOST"), env("KUBERNETES_SERVICE_PORT")
)
with open(env("KUBESANDBOX_TOKEN_FILE") or ACCOUNT + "/token") as file:
    token = file.read().strip()
context = ssl.create_default_context(cafile=env("KUBESANDBOX_CA_FILE") or ACCOUNT + "/ca.crt")
timeout = float(env("KUBESANDBOX_TIMEOUT") or "300")
group = "/apis/kubesandbox.dev/v1alpha1"


def call(method, path):
    request = urllib.request.Request(  # noqa: S310 (https to the apiserver)
        api + path, method=method, headers={"Authorization": "Bearer " + token}
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 (https to the apiserver)
            request, context=context, timeout=30
        ) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 404:
                return None
            detail = error.read().decode()[:300]
            raise SystemExit(f"{method} {path}: {error.code} {detail}") from None


def remaining(plural, kind):
    """What is left of ``plural``; deletes what is not being deleted yet."""
    listed = call("GET", f"{group}/{plural}")
    if listed is None:
        return None
    left = [item["metadata"] for item in listed["items"]]
    for meta in left:
        if not meta.get("deletionTimestamp"):
            print(f"deleting {kind} {meta['namespace']}/{meta['name']}", flush=True)
            call("DELETE", f"{group}/namespaces/{meta['namespace']}/{plural}/{meta['name']}")
    return left


deadline = time.monotonic() + timeout
while True:
    pools = remaining("sandboxpools", "SandboxPool") or []
    snapshots = remaining("sandboxsnapshots", "SandboxSnapshot") or []
    left = remaining("sandboxes", "Sandbox")
    if left is None:
        print("no Sandbox API (the CRD is gone): nothing to remove")
        break
    if not left and not pools and not snapshots:
        print("every Sandbox is gone, and every SandboxSnapshot")
        break
    if time.monotonic() > deadline:
        names = ", ".join(f"{m['namespace']}/{m['name']}" for m in pools + snapshots + left)
        sys.exit(
            f"after {timeout:.0f} s these SandboxPools, SandboxSnapshots and Sandboxes are still "
            f"there: {names}. "
            "Is the operator running? `helm uninstall --no-hooks` skips this wait (their VMs "
            "then keep running until their node agent is back and removes them)"
        )
    time.sleep(2)
