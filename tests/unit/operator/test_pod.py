from kubesandbox_api import Sandbox
from kubesandbox_operator.reconcile.pod import PodSettings, desired_pod, owned_by


def _sandbox() -> Sandbox:
    return Sandbox.from_body(
        {
            "metadata": {"name": "w", "namespace": "team", "uid": "u-1"},
            "spec": {
                "image": {"oci": "busybox"},
                "cpus": 2,
                "memory": "1Gi",
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "sandboxes", "operator": "Exists"}],
                "priorityClassName": "batch",
            },
        }
    )


def test_requests_are_the_vm_plus_the_documented_overhead() -> None:
    pod = desired_pod(_sandbox(), PodSettings(cpu_overhead_millicores=100, memory_overhead_mib=256))
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "2100m", "memory": "1280Mi"}
    assert resources["limits"] == {"memory": "1280Mi"}


def test_placement_fields_are_copied() -> None:
    spec = desired_pod(_sandbox(), PodSettings())["spec"]
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"key": "sandboxes", "operator": "Exists"}]
    assert spec["priorityClassName"] == "batch"


def test_the_pod_is_owned_by_and_labelled_for_its_sandbox() -> None:
    sandbox = _sandbox()
    pod = desired_pod(sandbox, PodSettings())
    assert owned_by(pod, sandbox)
    reference = pod["metadata"]["ownerReferences"][0]
    assert reference["controller"] is True
    assert reference["blockOwnerDeletion"] is True
    assert pod["metadata"]["labels"]["kubesandbox.dev/sandbox-uid"] == "u-1"


def test_the_allocation_ratio_shares_cores_between_vcpus() -> None:
    settings = PodSettings(cpu_allocation_ratio=10, cpu_overhead_millicores=25)
    resources = desired_pod(_sandbox(), settings)["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "225m"  # 2 vCPUs / 10 + 25m
    assert "cpu" not in resources["limits"]  # never throttled: the ratio is about scheduling


def test_the_pause_image_is_the_settings_one() -> None:
    pod = desired_pod(_sandbox(), PodSettings(pause_image="mirror.example/pause:3.10"))
    assert pod["spec"]["containers"][0]["image"] == "mirror.example/pause:3.10"
