from __future__ import annotations

from pathlib import Path

import pytest

from kubesandbox_kube.auth import Access, User
from kubesandbox_node.main import NodeAgentConfig, StaticTokenAuthenticator, load_config


def test_yaml_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "node-agent.yaml"
    config.write_text(
        "nodeName: n1\nstateDir: /srv/ksb\nallowEmulation: true\n"
        "registryMirrors: {docker.io: 127.0.0.1:5000}\nplainHttpRegistries: [127.0.0.1:5000]\n"
    )
    loaded = load_config(
        ["--config", str(config), "--node-name", "n2", "--registry-mirrors", "ghcr.io=m:1"]
    )
    assert loaded.node_name == "n2"
    assert loaded.state_dir == Path("/srv/ksb")
    assert loaded.allow_emulation is True
    assert loaded.registry_mirrors == {"ghcr.io": "m:1"}
    assert loaded.plain_http_registries == ["127.0.0.1:5000"]


def test_flags_alone_and_booleans() -> None:
    loaded = load_config(["--no-cgroups", "--allowed-host-paths", "/data", "--listen", ":1"])
    assert loaded.cgroups is False
    assert loaded.allowed_host_paths == ["/data"]
    assert loaded.listen == ":1"
    assert NodeAgentConfig().allow_emulation is False


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("nodeNmae: typo\n")
    with pytest.raises(ValueError, match="nodeNmae"):
        load_config(["--config", str(config)])


async def test_static_token_grants_only_its_holder() -> None:
    auth = StaticTokenAuthenticator("s3cret")
    assert await auth.authenticate("other") is None
    user = await auth.authenticate("s3cret")
    assert user is not None
    assert await auth.authorize(user, Access("update", "any"))


class Reviewer:
    async def authenticate(self, token: str) -> User | None:
        return User("alice") if token == "sa-token" else None

    async def authorize(self, user: User, access: Access) -> bool:
        return access.namespace == "alice-ns"


async def test_static_token_falls_back_to_the_cluster_for_other_tokens() -> None:
    auth = StaticTokenAuthenticator("s3cret", then=Reviewer())
    alice = await auth.authenticate("sa-token")
    assert alice == User("alice")
    assert await auth.authorize(alice, Access("update", "alice-ns"))
    assert not await auth.authorize(alice, Access("update", "bob-ns"))
    assert await auth.authenticate("nope") is None


def test_the_cgroup_parent_is_absolute_by_default_and_must_be_a_plain_path() -> None:
    assert NodeAgentConfig().cgroup_parent == "/kubesandbox"
    assert NodeAgentConfig(cgroup_parent="kubesandbox-dev").cgroup_parent == "kubesandbox-dev"
    for bad in ("/", "", "/a/../b", "a//b", "./a"):
        with pytest.raises(ValueError, match="cgroupParent"):
            NodeAgentConfig(cgroup_parent=bad)


def test_tls_off_unquoted_in_yaml_means_off(tmp_path: Path) -> None:
    config = tmp_path / "node-agent.yaml"
    config.write_text("tls: off\n")
    assert load_config(["--config", str(config)]).tls_mode == "off"
    config.write_text("tls: auto\n")
    assert load_config(["--config", str(config)]).tls_mode == "auto"
    config.write_text("tls: sometimes\n")
    with pytest.raises(ValueError, match="tls"):
        load_config(["--config", str(config)])


def test_egress_upstream_cas_from_the_file_and_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "node-agent.yaml"
    config.write_text("egressUpstreamCAs: [/etc/ca/one.pem]\n")
    assert load_config(["--config", str(config)]).egress_upstream_cas == [Path("/etc/ca/one.pem")]
    flags = ["--egress-upstream-cas", "/a.pem", "--egress-upstream-cas", "/b.pem"]
    assert load_config(flags).egress_upstream_cas == [Path("/a.pem"), Path("/b.pem")]
