from __future__ import annotations

import base64
import json

import pytest

from kubesandbox_node.images.auth import Keychain, normalize_registry, parse_challenge
from kubesandbox_node.images.errors import AuthError, ImageError
from kubesandbox_node.images.reference import parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("team/app:1.0", "docker.io", "team/app", "1.0", None),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("127.0.0.1:5000/a/b/c:v", "127.0.0.1:5000", "a/b/c", "v", None),
        (f"reg.example/app@{DIGEST}", "reg.example", "app", None, DIGEST),
        (f"reg.example/app:v1@{DIGEST}", "reg.example", "app", "v1", DIGEST),
    ],
)
def test_references_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    "text", ["", "UPPER/app", "app:", "app@sha256:short", " app", "a//b", "app:bad tag"]
)
def test_bad_references_name_the_field(text: str) -> None:
    with pytest.raises(ImageError, match=r"^spec\.image\.oci: "):
        parse_reference(text)


def test_docker_hub_api_host() -> None:
    assert parse_reference("busybox").api_host == "registry-1.docker.io"


def test_dockerconfigjson_forms() -> None:
    auth = base64.b64encode(b"u1:p:with:colons").decode()
    content = json.dumps(
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "reg.example:5000": {"username": "u2", "password": "p2"},
                "tok.example": {"identitytoken": "T"},
            }
        }
    ).encode()
    keychain = Keychain.from_dockerconfigjsons([("spec.image.pullSecrets[0]", content)])
    hub = keychain.lookup("docker.io")
    assert hub is not None
    assert (hub.username, hub.password) == ("u1", "p:with:colons")
    other = keychain.lookup("reg.example:5000")
    assert other is not None
    assert other.password == "p2"
    assert "p2" not in repr(other)
    assert keychain.lookup("nowhere") is None


def test_first_secret_wins() -> None:
    first = json.dumps({"auths": {"r": {"username": "a", "password": "1"}}}).encode()
    second = json.dumps({"auths": {"r": {"username": "b", "password": "2"}}}).encode()
    keychain = Keychain.from_dockerconfigjsons([("s0", first), ("s1", second)])
    found = keychain.lookup("r")
    assert found is not None
    assert found.username == "a"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"auths": {"r": {"auth": "!!"}}}', "base64"),
        (b'{"auths": {"r": {}}}', "needs 'auth'"),
    ],
)
def test_bad_dockerconfigjson_names_the_secret(content: bytes, message: str) -> None:
    with pytest.raises(AuthError, match=rf"spec\.image\.pullSecrets\[1\].*{message}"):
        Keychain.from_dockerconfigjsons([("spec.image.pullSecrets[1]", content)])


def test_registry_keys_normalize() -> None:
    assert normalize_registry("https://Reg.Example:5000/v2/") == "reg.example:5000"
    assert normalize_registry("registry-1.docker.io") == "docker.io"


def test_bearer_challenge_parses() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry",
        "scope": "repository:a/b:pull",
    }
