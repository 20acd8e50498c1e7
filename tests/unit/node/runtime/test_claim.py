from __future__ import annotations

import uuid
from typing import Any

import pytest

from kubesandbox_api.conditions import Phase
from kubesandbox_node.runtime.claim import claim_payload
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import ClaimRefused, Supervisor
from kubesandbox_protocol.messages import MessageType
from tests.unit.node.runtime.conftest import Env
from tests.unit.node.runtime.fakes import FakeHandle
from tests.unit.node.runtime.test_supervisor import until


def desired(name: str, *, member: bool = False, **spec: Any) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"oci": "busybox:1.36"}, **spec}, "poolMember": member}
    )  # fmt: skip


async def member(env: Env) -> Supervisor:
    supervisor = env.runtime.put(desired("pool-abcde", member=True))
    await until(supervisor, Phase.RUNNING)
    return supervisor


def handle(supervisor: Supervisor) -> FakeHandle:
    assert isinstance(supervisor.handle, FakeHandle)
    return supervisor.handle


async def test_a_claim_hands_the_running_vm_to_the_claimant(env: Env) -> None:
    vm = await member(env)
    key = vm.uid
    claimant = desired("mine", env=[{"name": "GREETING", "value": "hi"}], hostname="mine",
                       scripts={"hello": "echo hi"})  # fmt: skip
    served = await env.runtime.claim(key, claimant, "pool")
    assert served is vm
    assert vm.uid == key  # the VM keeps its key: directory, rootfs, network
    assert vm.sandbox_uid == claimant.uid
    assert vm.desired.name == "mine"
    assert not vm.desired.pool_member
    assert vm.status().pool == "pool"
    assert vm.desired.pinned_image == vm.record.image is not None  # its layers, kept
    assert env.runtime.store.dir(claimant.uid).resolve() == vm.dir.resolve()
    assert (env.runtime.store.dir(claimant.uid) / "agent.sock").exists()
    assert vm.phase == Phase.RUNNING
    assert len(env.vmm.handles) == 1  # nothing booted
    _, _, payload = next(r for r in handle(vm).guest.received if r[1] == MessageType.CLAIM)
    assert payload["env"] == ["GREETING=hi"]
    assert payload["hostname"] == "mine"
    assert payload["scripts"] == [{"name": "hello", "content": b"echo hi"}]
    assert len(str(payload["machine_id"])) == 32


async def test_the_claimant_reaches_the_vm_and_the_member_uid_reaches_nothing(env: Env) -> None:
    vm = await member(env)
    key = vm.uid
    claimant = desired("mine")
    await env.runtime.claim(key, claimant, "pool")
    assert env.runtime.get(claimant.uid) is vm
    assert env.runtime.get(key) is None
    await env.runtime.remove(key)  # the pool deleting its claimed member
    assert env.runtime.get(claimant.uid) is vm
    assert vm.handle is not None
    with pytest.raises(ClaimRefused):
        env.runtime.put(desired("pool-abcde").model_copy(update={"uid": key}))


async def test_puts_of_the_claimant_apply_to_the_claimed_vm(env: Env) -> None:
    vm = await member(env)
    claimant = desired("mine")
    await env.runtime.claim(vm.uid, claimant, "pool")
    again = claimant.model_copy(update={"generation": 2})
    assert env.runtime.put(again) is vm
    assert vm.desired.generation == 2
    assert vm.desired.uid == vm.uid
    await env.runtime.remove(claimant.uid)
    assert env.runtime.get(claimant.uid) is None
    assert vm.uid in env.preparer.removed
    assert not env.runtime.store.dir(claimant.uid).exists()
    assert not env.runtime.store.dir(claimant.uid).is_symlink()


async def test_a_claim_survives_a_node_agent_restart(env: Env) -> None:
    vm = await member(env)
    claimant = desired("mine")
    await env.runtime.claim(vm.uid, claimant, "pool")
    await env.runtime.close()
    restarted = env.fresh_runtime()
    await restarted.recover()
    adopted = restarted.get(claimant.uid)
    assert adopted is not None
    assert adopted.uid == vm.uid
    assert list(restarted.sandboxes) == [vm.uid]  # the claimant's link is no second record
    assert restarted.get(vm.uid) is None
    env.runtime = restarted


async def test_a_vm_is_claimed_once(env: Env) -> None:
    vm = await member(env)
    first, second = desired("a"), desired("b")
    await env.runtime.claim(vm.uid, first, "pool")
    assert await env.runtime.claim(vm.uid, first, "pool") is vm  # a retry
    with pytest.raises(ClaimRefused):
        await env.runtime.claim(vm.uid, second, "pool")


async def test_only_running_pool_members_can_be_claimed(env: Env) -> None:
    ordinary = env.runtime.put(desired("ordinary"))
    await until(ordinary, Phase.RUNNING)
    with pytest.raises(ClaimRefused, match="pool VM"):
        await env.runtime.claim(ordinary.uid, desired("mine"), "pool")
    with pytest.raises(ClaimRefused, match="no unclaimed"):
        await env.runtime.claim(str(uuid.uuid4()), desired("mine"), "pool")


async def test_a_pool_vm_serves_its_own_namespace_only(env: Env) -> None:
    vm = await member(env)
    other = desired("mine").model_copy(update={"namespace": "elsewhere"})
    with pytest.raises(ClaimRefused, match="namespace"):
        await env.runtime.claim(vm.uid, other, "pool")


def test_each_claim_payload_is_a_fresh_identity() -> None:
    claimant = desired("x" * 70)
    one, two = claim_payload(claimant, []), claim_payload(claimant, [])
    assert one["machine_id"] != two["machine_id"]
    assert one["entropy"] != two["entropy"]
    assert one["hostname"] == "x" * 63


async def test_a_claimants_secrets_get_their_egress_before_the_guest_takes_its_env(
    env: Env,
) -> None:
    vm = await member(env)
    secret = {"env": "API_KEY", "secretKeyRef": {"name": "s", "key": "k"}, "allowHosts": ["a.b"]}
    claimant = desired("mine", secrets=[secret])
    await env.runtime.claim(vm.uid, claimant, "pool")
    assert env.preparer.claim_networks == [(vm.uid, 1)]
    assert env.preparer.trusted == [vm.uid]  # the egress CA into the guest's trust store
    # (the placeholders in the env: tests/integration/node/runtime/test_secrets.py, real VM)


async def test_a_claimant_without_secrets_gets_no_egress_ca(env: Env) -> None:
    vm = await member(env)
    await env.runtime.claim(vm.uid, desired("mine"), "pool")
    assert env.preparer.claim_networks == [(vm.uid, 0)]
    assert env.preparer.trusted == []
