"""Unit tests of the microsandbox ⇄ Sandbox translation, on bodies captured from the real SDK.

The fixtures in ``bodies/`` were sent by ``microsandbox`` 0.7.11 (and 0.6.18 for ``v06-*``)
to a stand-in server (docs/msb-compat.md), with fake secret values. Golden tests pin what each
captured body becomes; the refusal table pins which request-body field each refusal names; the
hostile-input tests replace every value of the richest body with every JSON type and check
that the answer is a translation or an InvalidConfig, never another exception.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_api.spec import SandboxSpec
from kubesandbox_gateway.msb_wire import SDK_STATUS_REASONS, SDK_STATUSES
from kubesandbox_gateway.translate import (
    InvalidConfig,
    Translation,
    redacted,
    sandbox_from_create,
    sandbox_object,
)

BODIES = Path(__file__).parent / "bodies"
SECRET = "sbx-t1-msb"
"""The companion Secret name the gateway would pass."""

JsonDict = dict[str, Any]


def body(name: str) -> JsonDict:
    loaded = json.loads((BODIES / f"{name}.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def translate(b: JsonDict) -> Translation:
    return sandbox_from_create(b, secret_name=SECRET)


def changed(base: JsonDict, path: tuple[str | int, ...], value: Any) -> JsonDict:
    """A deep copy of ``base`` with the value at ``path`` replaced (created if missing)."""
    out = copy.deepcopy(base)
    target: Any = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


def refusal(b: JsonDict) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as caught:
        translate(b)
    return caught.value


# --- golden: captured bodies ------------------------------------------------------------------

MINIMAL_SPEC = {"image": {"oci": "python", "pullPolicy": "IfMissing"}, "cpus": 1, "memory": 512}


@pytest.mark.parametrize("fixture", ["minimal", "v06-minimal"])
def test_minimal_bodies_of_both_sdk_generations_become_the_same_sandbox(fixture: str) -> None:
    t = translate(body(fixture))
    assert t.name == body(fixture)["name"]
    assert t.spec == MINIMAL_SPEC
    assert (t.labels, t.annotations, t.secret_data) == ({}, {}, {})


def test_full_body_maps_every_option() -> None:
    t = translate(body("full"))
    assert t.name == "fx-full"
    assert t.spec == {
        "image": {"oci": "python:3.12", "pullPolicy": "Always", "pullSecrets": [{"name": SECRET}]},
        "cpus": 2,
        "memory": 1024,
        "workdir": "/app",
        "shell": "/bin/bash",
        "user": "1000:1000",
        "entrypoint": ["/bin/tini", "--"],
        "command": ["sleep", "inf"],
        "logLevel": "Debug",
        "scripts": {"setup": "#!/bin/sh\necho hi\n"},
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}],
        "volumes": [
            {"mountPath": "/data", "named": {"name": "cache", "readOnly": False}},
            {"mountPath": "/scratch", "tmpfs": {"sizeMiB": 64}},
        ],
        "patches": [
            {"text": {"path": "/etc/motd", "content": "hello\n", "mode": 0o644, "replace": True}},
            {
                "file": {
                    "path": "/usr/local/bin/blob",
                    "data": base64.b64encode(b"\x00\x01binary").decode(),
                    "mode": 0o755,
                    "replace": False,
                }
            },
            {"mkdir": {"path": "/opt/d", "mode": 0o700}},
            {"append": {"path": "/etc/profile", "content": "export X=1\n"}},
            {
                "symlink": {
                    "path": "/usr/local/bin/py",
                    "target": "/usr/bin/python3",
                    "replace": False,
                }
            },
            {"remove": {"path": "/etc/issue"}},
        ],
        "network": {"policy": "PublicOnly"},
        "secrets": [
            {
                "env": "OPENAI_API_KEY",
                "secretKeyRef": {"name": SECRET, "key": "env.OPENAI_API_KEY"},
                "allowHosts": ["api.openai.com", "*.openai.com"],
            }
        ],
        "init": "auto",
        "lifecycle": {"maxDurationSeconds": 3600, "idleTimeoutSeconds": 300, "ephemeral": True},
    }
    assert t.labels == {"team": "x", "app.kubernetes.io/name": "demo"}
    assert t.annotations == {}
    assert set(t.secret_data) == {".dockerconfigjson", "env.OPENAI_API_KEY"}
    assert t.secret_data["env.OPENAI_API_KEY"] == "FAKE-SECRET-VALUE"
    auth = json.loads(t.secret_data[".dockerconfigjson"])["auths"]["docker.io"]
    assert auth["username"] == "bob"
    assert auth["password"] == "FAKE-REGISTRY-PASSWORD"
    assert base64.b64decode(auth["auth"]) == b"bob:FAKE-REGISTRY-PASSWORD"


def test_v06_secrets_and_registry_map_like_v07() -> None:
    t = translate(body("v06-env"))
    assert t.spec["secrets"] == [
        {
            "env": "TOK",
            "secretKeyRef": {"name": SECRET, "key": "env.TOK"},
            "allowHosts": ["api.x.io", "*.x.io"],
        }
    ]
    assert t.spec["image"]["pullSecrets"] == [{"name": SECRET}]
    assert (t.spec["workdir"], t.spec["shell"], t.spec["user"]) == ("/app", "/bin/bash", "1000")
    assert t.spec["env"] == [{"name": "A", "value": "1"}]
    assert t.secret_data["env.TOK"] == "FAKE-V06-SECRET"
    assert "FAKE-V06-PASSWORD" in t.secret_data[".dockerconfigjson"]


def secret_spec(**options: Any) -> JsonDict:
    """The ``spec.secrets`` entry of the captured ``TOK`` secrets, with ``options``."""
    ref = {"name": SECRET, "key": "env.TOK"}
    return {"env": "TOK", "secretKeyRef": ref, "allowHosts": ["api.x.io"], **options}


@pytest.mark.parametrize(
    ("fixture", "entry"),
    [
        (
            "secret-options",
            secret_spec(
                placeholder="PH_TOK",
                substitution={"headerFields": ["authorization"], "query": True, "body": True},
                allowPlaceholderFor=["y.io"],
                requireTLS=False,
            ),
        ),
        (
            "secret-placeholder-for",
            secret_spec(
                substitution={"headers": False, "query": True},
                allowPlaceholderFor=["*.z.io", "198.51.100.3"],
            ),
        ),
        (
            "secret-plain-http",
            secret_spec(
                placeholder="MY_TOKEN_PH",
                substitution={"headerFields": ["authorization", "x-api-key"], "body": True},
                requireTLS=False,
            ),
        ),
        (
            "secret-host-literals",
            {
                **secret_spec(),
                "allowHosts": ["api.x.io", "*.y.io", "203.0.113.9", "2001:db8::7"],
            },
        ),
        ("secret-violation-terminate", secret_spec()),
    ],
)
def test_captured_secret_options_become_spec_fields(fixture: str, entry: JsonDict) -> None:
    t = translate(body(fixture))
    assert t.spec["secrets"] == [entry]
    assert t.secret_data == {"env.TOK": "FAKE-VALUE" if fixture != "secret-options" else
                             "FAKE-TOKEN-VALUE"}  # fmt: skip
    SandboxSpec.model_validate(t.spec)


@pytest.mark.parametrize(
    ("fixture", "action"),
    [
        ("secret-violation-block", "Block"),
        ("secret-violation-terminate", "BlockAndTerminate"),
        ("secret-options", None),  # block_and_log: the default, not written
    ],
)
def test_the_network_violation_action_becomes_secret_violation_action(
    fixture: str, action: str | None
) -> None:
    network = translate(body(fixture)).spec["network"]
    assert network.get("secretViolationAction") == action
    assert network["policy"] == "PublicOnly"


@pytest.mark.parametrize(
    ("sdk", "spec"),
    [("block", "Block"), ("block_and_log", "BlockAndLog"),
     ("block_and_terminate", "BlockAndTerminate")],
)  # fmt: skip
def test_an_entrys_violation_action_becomes_its_violation_action(sdk: str, spec: str) -> None:
    # the 0.7.11 SDK cannot send it (Secret.env(violation_action=...) raises TypeError in the
    # SDK itself); the shape is the network-level one, {"type": ...}
    t = translate(with_secret(violation_action={"type": sdk}))
    assert t.spec["secrets"][0]["violationAction"] == spec
    assert "secretViolationAction" not in t.spec.get("network", {})


def test_v06_on_violation_and_injection_map_like_v07() -> None:
    b = body("v06-env")
    b["network"]["secrets"]["on_violation"] = {"type": "block_and_terminate"}
    injection = {"headers": True, "basic_auth": True, "query_params": True, "body": True}
    b["network"]["secrets"]["entries"][0]["injection"] = injection
    t = translate(b)
    assert t.spec["network"]["secretViolationAction"] == "BlockAndTerminate"
    assert t.spec["secrets"][0]["substitution"] == {"query": True, "body": True}
    b["network"]["secrets"]["entries"][0]["injection"] = {**injection, "headers": False,
                                                          "basic_auth": False}  # fmt: skip
    assert translate(b).spec["secrets"][0]["substitution"] == {
        "headers": False, "query": True, "body": True}  # fmt: skip


def test_options_at_the_sdks_defaults_add_nothing() -> None:
    t = translate(with_secret(violation_action=None, passthrough_hosts=[]))
    assert t.spec["secrets"] == [{**secret_spec()}]
    assert "secretViolationAction" not in t.spec.get("network", {})


def test_a_refused_placeholder_never_shows_the_value() -> None:
    error = refusal(with_secret(value="REAL-VALUE-42", placeholder="REAL-VALUE-42"))
    assert "REAL-VALUE-42" not in str(error)


@pytest.mark.parametrize(
    "fixture",
    ["secret-options", "secret-placeholder-for", "secret-plain-http", "secret-host-literals",
     "secret-violation-terminate", "secret-violation-block", "full"],
)  # fmt: skip
def test_secret_options_round_trip_through_the_sdk_shape(fixture: str) -> None:
    b = body(fixture)
    echoed = sandbox_object(stored(translate(b)))["spec"]["network"]["secrets"]
    sent = copy.deepcopy(b["network"]["secrets"])
    for entry in sent["entries"]:
        del entry["value"]  # never echoed
    assert echoed == sent


@pytest.mark.parametrize(
    ("fixture", "policy"),
    [
        ("network-none", "None"),
        ("network-all", "All"),
        ("network-default", "PublicOnly"),
        ("network-nonstrict", "PublicOnly"),
    ],
)
def test_network_profiles_become_policies(fixture: str, policy: str) -> None:
    assert translate(body(fixture)).spec["network"] == {"policy": policy}


def test_rules_and_deny_lists_become_spec_rules() -> None:
    # Network(policy=NetworkPolicy(rules=[allow example.com tcp/443]), deny_domains=[...])
    assert translate(body("network-rules")).spec["network"] == {
        "policy": "None",
        "rules": [
            {"action": "Deny", "destination": {"domain": "bad.example"}},
            {"action": "Allow", "destination": {"domain": "example.com"}, "protocol": "TCP",
             "ports": [{"port": 443}]},
        ],
    }  # fmt: skip


def test_rule_destinations_protocols_and_ports_as_the_sdk_sends_them() -> None:
    # each destination shape as captured from the SDK 0.7.11 (Destination.cidr/ip/any/
    # domain_suffix, Network(deny_domains=..., deny_domain_suffixes=...) with allow default)
    rules = [
        {"direction": "egress", "destination": {"cidr": "203.0.113.7/32"}, "protocols": [],
         "ports": [], "action": "deny"},
        {"direction": "egress", "destination": "any", "protocols": ["udp", "tcp"],
         "ports": [{"start": 1000, "end": 2000}], "action": "allow"},
        {"direction": "egress", "destination": {"domain_suffix": "Evil.Test"}, "protocols":
         ["icmpv4"], "ports": [], "action": "deny"},
    ]  # fmt: skip
    policy = {"default_egress": "allow", "default_ingress": "allow", "rules": rules}
    spec = translate(changed(body("minimal"), ("network", "policy"), policy)).spec
    ports = [{"port": 1000, "endPort": 2000}]
    assert spec["network"] == {
        "policy": "All",
        "rules": [
            {"action": "Deny", "destination": {"cidr": "203.0.113.7/32"}},
            {"action": "Allow", "destination": {"cidr": "0.0.0.0/0"}, "protocol": "UDP",
             "ports": ports},
            {"action": "Allow", "destination": {"cidr": "0.0.0.0/0"}, "protocol": "TCP",
             "ports": ports},
            {"action": "Deny", "destination": {"domainSuffix": "evil.test"}, "protocol": "ICMP"},
        ],
    }  # fmt: skip


def test_rules_before_the_public_profile_keep_public_only() -> None:
    b = body("network-default")
    rules = b["network"]["policy"]["rules"]
    deny = {"direction": "egress", "destination": {"domain": "x.test"}, "protocols": [],
            "ports": [], "action": "deny"}  # fmt: skip
    b = changed(b, ("network", "policy", "rules"), [rules[0], deny, rules[1]])
    assert translate(b).spec["network"] == {
        "policy": "PublicOnly",
        "rules": [{"action": "Deny", "destination": {"domain": "x.test"}}],
    }


def test_no_network_option_keeps_the_default_policy() -> None:
    assert "network" not in translate(body("minimal")).spec


def test_bind_mount_root_disk_size_and_pull_never() -> None:
    assert translate(body("mount-bind")).spec["volumes"] == [
        {"mountPath": "/host", "bind": {"path": "/srv/x", "readOnly": True}}
    ]
    assert translate(body("root-disk-size")).spec["rootfsSizeMiB"] == 2048
    assert translate(body("pull-never")).spec["image"]["pullPolicy"] == "Never"


def test_private_registry_host_is_taken_from_the_reference() -> None:
    b = changed(body("full"), ("reference",), "registry.example.com:5000/team/app:1")
    auths = json.loads(translate(b).secret_data[".dockerconfigjson"])["auths"]
    assert list(auths) == ["registry.example.com:5000"]


def test_anonymous_registry_needs_no_secret() -> None:
    t = translate(changed(body("minimal"), ("registry",), {"mode": "anonymous"}))
    assert t.secret_data == {}
    assert "pullSecrets" not in t.spec["image"]


def test_network_enabled_false_means_no_network() -> None:
    t = translate(changed(body("minimal"), ("network", "enabled"), False))
    assert t.spec["network"] == {"policy": "None"}


@pytest.mark.parametrize(
    ("fixture", "field"),
    [
        ("init-config", "init.args"),
        ("mount-tmpfs-flags", "mounts[0].options.noexec"),
        ("network-private", "network.policy.rules[3]"),  # a rule after the public profile
        ("patch-copy", "patches[0].type"),
        ("security-restricted", "security_profile"),
    ],
)
def test_captured_options_we_cannot_honour_are_refused(fixture: str, field: str) -> None:
    error = refusal(body(fixture))
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert len(error.message) > 20  # says why, not just "invalid"


def test_every_accepted_fixture_validates_with_the_model() -> None:
    accepted = 0
    for path in sorted(BODIES.glob("*.json")):
        try:
            t = translate(json.loads(path.read_text()))
        except InvalidConfig:
            continue
        accepted += 1
        image = SandboxSpec.model_validate(t.spec).image
        assert image.oci or (image.snapshot and image.snapshot.name == t.snapshot)
    assert accepted >= 10


# --- refusals name the request-body field -----------------------------------------------------

TMPFS = {
    "type": "tmpfs",
    "guest": "/t",
    "size_mib": None,
    "options": {"readonly": False, "noexec": False, "nosuid": False, "nodev": False},
}
NAMED = {
    "type": "named",
    "name": "cache",
    "guest": "/data",
    "options": {"readonly": False, "noexec": False, "nosuid": False, "nodev": False},
    "stat_virtualization": "strict",
    "host_permissions": "private",
}
SECRET_ENTRY = {
    "env_var": "TOK",
    "value": "FAKE",
    "placeholder": "$MSB_TOK",
    "allowed_hosts": [{"type": "exact", "value": "api.x.io"}],
    "substitution": {"headers": True, "query": False, "body": False},
    "passthrough_hosts": [],
    "require_tls_identity": True,
}


def with_secret(**fields: Any) -> JsonDict:
    entry = {**SECRET_ENTRY, **fields}
    return changed(body("minimal"), ("network", "secrets"), {"entries": [entry]})


SECRET_REFUSALS: list[tuple[str, JsonDict, str]] = [
    ("violation type", {"violation_action": {"type": "kill"}}, "violation_action.type"),
    ("violation string", {"violation_action": "block"}, "violation_action"),
    (
        "violation key",
        {"violation_action": {"type": "block", "x": 1}},
        "violation_action.x",
    ),
    ("placeholder short", {"placeholder": "PH"}, "placeholder"),
    ("placeholder charset", {"placeholder": "PH TOK!"}, "placeholder"),
    ("placeholder long", {"placeholder": "P" * 129}, "placeholder"),
    ("placeholder number", {"placeholder": 123456}, "placeholder"),
    (
        "placeholder is value",
        {"value": "REAL-VALUE-1", "placeholder": "REAL-VALUE-1"},
        "placeholder",
    ),
    (
        "placeholder holds value",
        {"value": "REAL-VALUE", "placeholder": "xREAL-VALUEx"},
        "placeholder",
    ),
    ("value holds placeholder", {"value": "a$MSB_TOKb"}, "placeholder"),
    ("substitution key", {"substitution": {"cookies": True}}, "substitution.cookies"),
    ("substitution shape", {"substitution": ["query"]}, "substitution"),
    ("query not bool", {"substitution": {"query": "yes"}}, "substitution.query"),
    (
        "header field charset",
        {"substitution": {"header_fields": ["x api"]}},
        "substitution.header_fields[0]",
    ),
    (
        "header field empty",
        {"substitution": {"header_fields": [""]}},
        "substitution.header_fields[0]",
    ),
    (
        "header fields many",
        {"substitution": {"header_fields": ["a"] * 17}},
        "substitution.header_fields",
    ),
    (
        "header fields without headers",
        {"substitution": {"headers": False, "header_fields": ["authorization"]}},
        "substitution.header_fields",
    ),
    ("injection and substitution", {"injection": {"headers": True}}, "injection"),
    (
        "passthrough host",
        {"passthrough_hosts": [{"type": "exact", "value": "Y.io"}]},
        "passthrough_hosts[0].value",
    ),
    (
        "passthrough kind",
        {"passthrough_hosts": [{"type": "any", "value": "y.io"}]},
        "passthrough_hosts[0].type",
    ),
    ("passthrough shape", {"passthrough_hosts": ["y.io"]}, "passthrough_hosts[0]"),
    (
        "passthrough many",
        {"passthrough_hosts": [{"type": "exact", "value": "y.io"}] * 33},
        "passthrough_hosts",
    ),
    (
        "ipv6 not hex",
        {"allowed_hosts": [{"type": "exact", "value": "2001:db8::zz"}]},
        "allowed_hosts[0].value",
    ),
    (
        "ipv6 malformed",
        {"allowed_hosts": [{"type": "exact", "value": "1:2:3"}]},
        "allowed_hosts[0]",
    ),
    ("tls not bool", {"require_tls_identity": "no"}, "require_tls_identity"),
]
"""Bad secret options: (name, entry fields, the entry's field the refusal names)."""


REFUSALS: list[tuple[str, JsonDict, str]] = [
    ("name missing", changed(body("minimal"), ("name",), None), "name"),
    ("name upper case", changed(body("minimal"), ("name",), "My_Box"), "name"),
    ("name too long", changed(body("minimal"), ("name",), "a" * 254), "name"),
    ("no image", changed(body("minimal"), ("source",), None), "source"),
    ("bind root", changed(body("minimal"), ("source",), "bind"), "source"),
    ("disk root 0.6", changed(body("v06-minimal"), ("image",), {"type": "disk"}), "image.type"),
    ("both shapes", changed(body("minimal"), ("image",), {"type": "oci"}), "image"),
    ("empty reference", changed(body("minimal"), ("reference",), ""), "reference"),
    ("reference with space", changed(body("minimal"), ("reference",), "a b"), "reference"),
    (
        "reference 0.6 bad",
        changed(body("v06-minimal"), ("image", "reference"), "a b"),
        "image.reference",
    ),
    ("unknown option", changed(body("minimal"), ("hostname",), "h"), "hostname"),
    ("unknown runtime key", changed(body("minimal"), ("runtime", "tty"), True), "runtime.tty"),
    (
        "memory too small",
        changed(body("minimal"), ("resources", "memory_mib"), 32),
        "resources.memory_mib",
    ),
    (
        "memory string",
        changed(body("minimal"), ("resources", "memory_mib"), "1Gi"),
        "resources.memory_mib",
    ),
    ("vcpus boolean", changed(body("minimal"), ("resources", "vcpus"), True), "resources.vcpus"),
    ("vcpus too many", changed(body("minimal"), ("resources", "vcpus"), 65), "resources.vcpus"),
    (
        "disk too small",
        changed(body("minimal"), ("resources", "disk_size_mib"), 1),
        "resources.disk_size_mib",
    ),
    (
        "relative workdir",
        changed(body("minimal"), ("runtime", "workdir"), "app"),
        "runtime.workdir",
    ),
    (
        "workdir traversal",
        changed(body("minimal"), ("runtime", "workdir"), "/a/../b"),
        "runtime.workdir",
    ),
    ("relative shell", changed(body("minimal"), ("runtime", "shell"), "bash"), "runtime.shell"),
    ("bad user", changed(body("minimal"), ("runtime", "user"), "root; rm"), "runtime.user"),
    (
        "entrypoint not list",
        changed(body("minimal"), ("runtime", "entrypoint"), "sh"),
        "runtime.entrypoint",
    ),
    ("cmd item number", changed(body("minimal"), ("runtime", "cmd"), ["a", 1]), "runtime.cmd[1]"),
    ("log level", changed(body("minimal"), ("runtime", "log_level"), "loud"), "runtime.log_level"),
    (
        "script name",
        changed(body("minimal"), ("runtime", "scripts"), {"../x": "y"}),
        "runtime.scripts.../x",
    ),
    (
        "script content",
        changed(body("minimal"), ("runtime", "scripts"), {"x": 5}),
        "runtime.scripts.x",
    ),
    ("env not list", changed(body("minimal"), ("env",), {"A": "1"}), "env"),
    ("env item not object", changed(body("minimal"), ("env",), ["A=1"]), "env[0]"),
    (
        "env bad name",
        changed(body("minimal"), ("env",), [{"key": "1A", "value": ""}]),
        "env[0].key",
    ),
    (
        "env null value",
        changed(body("minimal"), ("env",), [{"key": "A", "value": None}]),
        "env[0].value",
    ),
    (
        "env duplicate",
        changed(
            body("minimal"), ("env",), [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]
        ),
        "env[1].key",
    ),
    (
        "env value too long",
        changed(body("minimal"), ("env",), [{"key": "A", "value": "x" * 40000}]),
        "env[0].value",
    ),
    ("label key", changed(body("minimal"), ("labels",), {"bad key": "v"}), "labels.bad key"),
    ("label value", changed(body("minimal"), ("labels",), {"k": "-v"}), "labels.k"),
    ("label value type", changed(body("minimal"), ("labels",), {"k": 1}), "labels.k"),
    (
        "label reserved",
        changed(body("minimal"), ("labels",), {"kubesandbox.dev/x": "v"}),
        "labels.kubesandbox.dev/x",
    ),
    (
        "label prefix",
        changed(body("minimal"), ("labels",), {"Bad_Prefix/x": "v"}),
        "labels.Bad_Prefix/x",
    ),
    ("labels not object", changed(body("minimal"), ("labels",), ["a"]), "labels"),
    (
        "rlimits",
        changed(body("minimal"), ("rlimits",), [{"resource": "nofile", "soft": 1, "hard": 1}]),
        "rlimits",
    ),
    (
        "mount type",
        changed(body("minimal"), ("mounts",), [{**TMPFS, "type": "owned"}]),
        "mounts[0].type",
    ),
    (
        "mount relative guest",
        changed(body("minimal"), ("mounts",), [TMPFS, {**TMPFS, "guest": "t"}]),
        "mounts[1].guest",
    ),
    (
        "mount duplicate guest",
        changed(body("minimal"), ("mounts",), [TMPFS, TMPFS]),
        "mounts[1].guest",
    ),
    (
        "tmpfs size zero",
        changed(body("minimal"), ("mounts",), [TMPFS, {**TMPFS, "guest": "/u", "size_mib": 0}]),
        "mounts[1].size_mib",
    ),
    (
        "tmpfs read-only",
        changed(body("minimal"), ("mounts",), [{**TMPFS, "options": {"readonly": True}}]),
        "mounts[0].options.readonly",
    ),
    (
        "tmpfs unknown option",
        changed(body("minimal"), ("mounts",), [{**TMPFS, "options": {"sync": True}}]),
        "mounts[0].options.sync",
    ),
    (
        "named bad name",
        changed(body("minimal"), ("mounts",), [{**NAMED, "name": "Bad_Name"}]),
        "mounts[0].name",
    ),
    (
        "named relaxed",
        changed(body("minimal"), ("mounts",), [{**NAMED, "stat_virtualization": "relaxed"}]),
        "mounts[0].stat_virtualization",
    ),
    (
        "named size",
        changed(body("minimal"), ("mounts",), [{**NAMED, "size_mib": 10}]),
        "mounts[0].size_mib",
    ),
    (
        "bind quota",
        changed(body("mount-bind"), ("mounts", 0, "quota_mib"), 10),
        "mounts[0].quota_mib",
    ),
    (
        "bind relative host",
        changed(body("mount-bind"), ("mounts", 0, "host"), "srv"),
        "mounts[0].host",
    ),
    (
        "patch traversal",
        changed(body("minimal"), ("patches",), [{"type": "remove", "path": "/etc/../../x"}]),
        "patches[0].path",
    ),
    (
        "patch relative",
        changed(body("minimal"), ("patches",), [{"type": "mkdir", "path": "etc", "mode": None}]),
        "patches[0].path",
    ),
    (
        "patch NUL",
        changed(body("minimal"), ("patches",), [{"type": "remove", "path": "/etc/\x00x"}]),
        "patches[0].path",
    ),
    (
        "symlink relative link",
        changed(
            body("minimal"),
            ("patches",),
            [{"type": "symlink", "target": "/x", "link": "y", "replace": False}],
        ),
        "patches[0].link",
    ),
    (
        "patch mode",
        changed(body("minimal"), ("patches",), [{"type": "mkdir", "path": "/d", "mode": 0o10000}]),
        "patches[0].mode",
    ),
    (
        "patch byte",
        changed(
            body("minimal"),
            ("patches",),
            [{"type": "file", "path": "/f", "content": [1, 256], "mode": None, "replace": False}],
        ),
        "patches[0].content[1]",
    ),
    (
        "patch bytes string",
        changed(
            body("minimal"),
            ("patches",),
            [{"type": "file", "path": "/f", "content": "AA==", "mode": None, "replace": False}],
        ),
        "patches[0].content",
    ),
    (
        "patch text too long",
        changed(
            body("minimal"),
            ("patches",),
            [{"type": "append", "path": "/f", "content": "x" * (256 * 1024 + 1)}],
        ),
        "patches[0].content",
    ),
    (
        "patch unknown type",
        changed(body("minimal"), ("patches",), [{"type": "chmod", "path": "/f"}]),
        "patches[0].type",
    ),
    (
        "patch unknown key",
        changed(body("minimal"), ("patches",), [{"type": "remove", "path": "/f", "mode": 1}]),
        "patches[0].mode",
    ),
    (
        "copy dir",
        changed(
            body("minimal"),
            ("patches",),
            [{"type": "copy_dir", "src": "/a", "dst": "/b", "replace": False}],
        ),
        "patches[0].type",
    ),
    (
        "rule direction",
        changed(body("network-rules"), ("network", "policy", "rules", 1, "direction"), "ingress"),
        "network.policy.rules[1].direction",
    ),
    (
        "rule group",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 0, "destination"),
            {"group": "metadata"},
        ),
        "network.policy.rules[0].destination.group",
    ),
    (
        "rule ipv6",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 0, "destination"),
            {"cidr": "2001:db8::/32"},
        ),
        "network.policy.rules[0].destination.cidr",
    ),
    (
        "rule bad cidr",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 1, "destination"),
            {"cidr": "203.0.113.0/40"},
        ),
        "network.policy.rules[1]",
    ),
    (
        "rule bad domain",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 0, "destination"),
            {"domain": "a b"},
        ),
        "network.policy.rules[0]",
    ),
    (
        "rule two destinations",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 0, "destination"),
            {"domain": "a.test", "cidr": "203.0.113.0/24"},
        ),
        "network.policy.rules[0].destination",
    ),
    (
        "rule icmpv6",
        changed(body("network-rules"), ("network", "policy", "rules", 1, "protocols"), ["icmpv6"]),
        "network.policy.rules[1].protocols[0]",
    ),
    (
        "rule port range",
        changed(
            body("network-rules"),
            ("network", "policy", "rules", 1, "ports"),
            [{"start": 443, "end": 80}],
        ),
        "network.policy.rules[1].ports[0].end",
    ),
    (
        "rule action",
        changed(body("network-rules"), ("network", "policy", "rules", 1, "action"), "log"),
        "network.policy.rules[1].action",
    ),
    (
        "default egress",
        changed(body("network-rules"), ("network", "policy", "default_egress"), "maybe"),
        "network.policy.default_egress",
    ),
    (
        "policy not object",
        changed(body("minimal"), ("network", "policy"), "public"),
        "network.policy",
    ),
    (
        "rule not object",
        changed(body("network-default"), ("network", "policy", "rules", 0), 5),
        "network.policy.rules[0]",
    ),
    (
        "network unknown",
        changed(body("minimal"), ("network", "ports"), [{"host_port": 1}]),
        "network.ports",
    ),
    ("secret no hosts", with_secret(allowed_hosts=[]), "network.secrets.entries[0].allowed_hosts"),
    (
        "secret host upper",
        with_secret(allowed_hosts=[{"type": "exact", "value": "API.x.io"}]),
        "network.secrets.entries[0].allowed_hosts[0].value",
    ),
    (
        "secret wildcard as exact",
        with_secret(allowed_hosts=[{"type": "exact", "value": "*.x.io"}]),
        "network.secrets.entries[0].allowed_hosts[0].value",
    ),
    (
        "secret host kind",
        with_secret(allowed_hosts=[{"type": "any", "value": "x.io"}]),
        "network.secrets.entries[0].allowed_hosts[0].type",
    ),
    ("secret empty value", with_secret(value=""), "network.secrets.entries[0].value"),
    (
        "secret huge value",
        with_secret(value="x" * (64 * 1024 + 1)),
        "network.secrets.entries[0].value",
    ),
    ("secret bad env", with_secret(env_var="A B"), "network.secrets.entries[0].env_var"),
    *[
        (f"secret {name}", with_secret(**fields), f"network.secrets.entries[0].{field}")
        for name, fields, field in SECRET_REFUSALS
    ],
    (
        "secret injection basic auth apart",
        changed(
            body("v06-env"),
            ("network", "secrets", "entries", 0, "injection", "basic_auth"),
            False,
        ),
        "network.secrets.entries[0].injection.basic_auth",
    ),
    (
        "secret injection key",
        changed(body("v06-env"), ("network", "secrets", "entries", 0, "injection", "cookies"), 1),
        "network.secrets.entries[0].injection.cookies",
    ),
    (
        "secret placeholders alike",
        changed(
            body("minimal"),
            ("network", "secrets"),
            {
                "entries": [
                    {**SECRET_ENTRY, "env_var": "A", "placeholder": "SAME_PLACEHOLDER"},
                    {**SECRET_ENTRY, "env_var": "B", "placeholder": "SAME_PLACEHOLDER"},
                ]
            },
        ),
        "network.secrets.entries",
    ),
    (
        "secret placeholder is another entry's value",
        changed(
            body("minimal"),
            ("network", "secrets"),
            {
                "entries": [
                    {**SECRET_ENTRY, "env_var": "A", "placeholder": "OTHER-VALUE-7"},
                    {**SECRET_ENTRY, "env_var": "B", "value": "OTHER-VALUE-7"},
                ]
            },
        ),
        "network.secrets.entries[0].placeholder",
    ),
    (
        "network violation type",
        changed(body("minimal"), ("network", "secrets"), {"violation_action": {"type": "log"}}),
        "network.secrets.violation_action.type",
    ),
    (
        "network violation shape",
        changed(body("minimal"), ("network", "secrets"), {"violation_action": "block"}),
        "network.secrets.violation_action",
    ),
    (
        "network violations differ",
        changed(
            body("minimal"),
            ("network", "secrets"),
            {"violation_action": {"type": "block"}, "on_violation": {"type": "block_and_log"}},
        ),
        "network.secrets.on_violation",
    ),
    (
        "secret env taken",
        changed(with_secret(), ("env",), [{"key": "TOK", "value": "1"}]),
        "network.secrets.entries[0].env_var",
    ),
    (
        "registry keyring",
        changed(body("minimal"), ("registry",), {"mode": "keyring"}),
        "registry.mode",
    ),
    (
        "registry colon user",
        changed(
            body("minimal"), ("registry",), {"mode": "inline", "username": "a:b", "password": "p"}
        ),
        "registry.username",
    ),
    (
        "registry no password",
        changed(body("minimal"), ("registry",), {"mode": "inline", "username": "a"}),
        "registry.password",
    ),
    (
        "init relative",
        changed(body("minimal"), ("init",), {"cmd": "sbin/init", "args": [], "env": []}),
        "init.cmd",
    ),
    (
        "init env",
        changed(body("minimal"), ("init",), {"cmd": "auto", "args": [], "env": [["K", "V"]]}),
        "init.env",
    ),
    ("init string", changed(body("minimal"), ("init",), "auto"), "init"),
    ("pull policy", changed(body("minimal"), ("pull_policy",), "sometimes"), "pull_policy"),
    (
        "max duration zero",
        changed(body("minimal"), ("lifecycle", "max_duration_secs"), 0),
        "lifecycle.max_duration_secs",
    ),
    (
        "max duration fraction",
        changed(body("minimal"), ("lifecycle", "max_duration_secs"), 1.5),
        "lifecycle.max_duration_secs",
    ),
    (
        "idle timeout string",
        changed(body("minimal"), ("lifecycle", "idle_timeout_secs"), "10"),
        "lifecycle.idle_timeout_secs",
    ),
    (
        "ephemeral string",
        changed(body("minimal"), ("lifecycle", "ephemeral"), "yes"),
        "lifecycle.ephemeral",
    ),
]


@pytest.mark.parametrize(
    ("b", "field"), [(b, f) for _, b, f in REFUSALS], ids=[label for label, _, _ in REFUSALS]
)
def test_refusal_names_the_request_body_field(b: JsonDict, field: str) -> None:
    error = refusal(b)
    assert error.field == field, str(error)
    assert error.message


def test_model_errors_are_reported_at_the_body_field_with_the_models_reason() -> None:
    error = refusal(changed(body("minimal"), ("runtime", "user"), "Bad User"))
    assert error.field == "runtime.user"
    assert "pattern" in error.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidConfig, match="must be an object"):
        sandbox_from_create([], secret_name=SECRET)  # type: ignore[arg-type]


# --- hostile input ----------------------------------------------------------------------------

HOSTILE: list[Any] = [None, True, -1, 2**70, 1.5, "", "x" * 5000, "/../..", [], [None], {}, {"": 1}]


def leaf_paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path into a JSON value (objects and arrays included), shallow first."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            yield from leaf_paths(item, (*path, i))


@pytest.mark.parametrize(
    "fixture", ["full", "v06-env", "mount-bind", "secret-options", "secret-violation-terminate"]
)
def test_any_value_anywhere_gives_a_translation_or_invalid_config(fixture: str) -> None:
    base = body(fixture)
    outcomes = [
        outcome(changed(base, path, value)) for path in leaf_paths(base) for value in HOSTILE
    ]
    assert len(outcomes) > 100
    assert all(o == "accepted" or o.startswith("refused: ") for o in outcomes)
    assert any(o == "accepted" for o in outcomes)


def outcome(b: JsonDict) -> str:
    """``accepted`` (and the spec validates) or ``refused: <field>``; anything else raises."""
    try:
        t = translate(b)
    except InvalidConfig as error:
        return f"refused: {error.field}"
    SandboxSpec.model_validate(t.spec)
    return "accepted"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("env",), "env"),
        (("mounts",), "mounts"),
        (("patches",), "patches"),
        (("rlimits",), "rlimits"),
        (("runtime", "cmd"), "runtime.cmd"),
        (("network", "secrets", "entries"), "network.secrets.entries"),
    ],
)
def test_huge_lists_are_refused_by_size(path: tuple[str, ...], field: str) -> None:
    b = body("minimal")
    b["network"]["secrets"] = {"entries": []}
    error = refusal(changed(b, path, [{}] * 1_000_000))
    assert error.field == field
    assert "1000000 items" in error.message


def test_huge_maps_are_refused_by_size() -> None:
    labels = {f"k{i}": "v" for i in range(100_000)}
    assert refusal(changed(body("minimal"), ("labels",), labels)).field == "labels"
    scripts = {f"s{i}": "" for i in range(100_000)}
    assert refusal(changed(body("minimal"), ("runtime", "scripts"), scripts)).field == (
        "runtime.scripts"
    )


def test_huge_file_patch_is_refused_before_it_is_decoded() -> None:
    patch = {"type": "file", "path": "/f", "content": [0] * (1024 * 1024), "mode": None}
    error = refusal(changed(body("minimal"), ("patches",), [{**patch, "replace": False}]))
    assert error.field == "patches[0].content"


def test_secret_data_is_bounded_in_total() -> None:
    entries = [
        {**SECRET_ENTRY, "env_var": f"T{i}", "placeholder": f"$MSB_T{i}", "value": "x" * 60_000}
        for i in range(12)
    ]
    b = changed(body("minimal"), ("network", "secrets"), {"entries": entries})
    assert refusal(b).field.startswith("network.secrets.entries[")


def test_long_hostile_keys_are_shortened_in_the_field_path() -> None:
    error = refusal(changed(body("minimal"), ("labels",), {"\n" * 10_000: "v"}))
    assert error.field.startswith("labels.")
    assert len(error.field) < 100


# --- Sandbox object → SDK JSON ----------------------------------------------------------------

UID = "6f1c2a57-0d7e-4c8e-9d8a-2b1b8f9f0c11"
RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def stored(t: Translation, status: JsonDict | None = None, *, state: str | None = None) -> JsonDict:
    """The Sandbox as the apiserver would return it after the gateway created it."""
    spec = copy.deepcopy(t.spec)
    if state is not None:
        spec.setdefault("lifecycle", {})["state"] = state
    return {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {
            "name": t.name,
            "namespace": "team-a",
            "uid": UID,
            "creationTimestamp": "2026-11-22T14:00:00Z",
            "labels": t.labels,
            "annotations": t.annotations,
        },
        "spec": spec,
        "status": status or {},
    }


def assert_sdk_decodes(answer: JsonDict) -> None:
    """The rules the SDK's decoder was observed to enforce (docs/msb-compat.md §3)."""
    for key in ("id", "org_id", "name", "slug", "status", "created_at"):
        assert isinstance(answer[key], str), key
    assert isinstance(answer["ephemeral"], bool)
    assert answer["status"] in SDK_STATUSES
    assert answer["status_reason"] is None or answer["status_reason"] in SDK_STATUS_REASONS
    for key in ("created_at", "started_at", "stopped_at"):
        assert answer[key] is None or RFC3339_Z.fullmatch(answer[key]), key
    spec = answer["spec"]
    assert spec["source"] in ("oci", "bind", "disk_image")
    if spec["source"] == "disk_image":
        assert spec["format"] in ("qcow2", "raw", "vmdk")  # the SDK drops the spec otherwise
    assert isinstance(spec["runtime"], dict)
    assert all(isinstance(item["value"], str) for item in spec["env"])


def test_identity_and_timestamps() -> None:
    t = translate(body("full"))
    status = {
        "phase": "Running",
        "startedAt": "2026-11-22T14:00:05+00:00",
        "stoppedAt": "not a time",
    }
    answer = sandbox_object(stored(t, status))
    assert_sdk_decodes(answer)
    assert (answer["id"], answer["org_id"]) == (UID, "team-a")
    assert answer["name"] == answer["slug"] == "fx-full"
    assert answer["ephemeral"] is True
    assert answer["created_at"] == "2026-11-22T14:00:00Z"
    assert answer["started_at"] == "2026-11-22T14:00:05Z"
    assert answer["stopped_at"] is None


@pytest.mark.parametrize(
    ("phase", "state", "status", "reason"),
    [
        (None, None, "starting", "scheduling"),
        ("Pending", None, "starting", "scheduling"),
        ("Scheduled", None, "starting", None),
        ("Pulling", None, "starting", None),
        ("Booting", None, "starting", None),
        (None, "Stopped", "created", None),
        ("Pending", "Stopped", "created", None),
        ("Running", None, "running", None),
        ("Paused", "Paused", "stopped", None),
        ("Draining", None, "stopping", None),
        ("Stopping", None, "stopping", None),
        ("Stopped", "Stopped", "stopped", None),
        ("Suspending", "Suspended", "stopping", None),
        ("Suspended", "Suspended", "stopped", None),
        ("Suspending", None, "running", None),  # idle suspend: the next call wakes it
        ("Suspended", None, "running", None),
        ("Resuming", None, "running", None),
        ("Crashed", None, "failed", None),
        ("Failed", None, "failed", None),
        ("SomeFuturePhase", None, "starting", None),
    ],
)
def test_status_table(
    phase: str | None, state: str | None, status: str, reason: str | None
) -> None:
    sandbox_status = {"phase": phase} if phase else {}
    answer = sandbox_object(stored(translate(body("minimal")), sandbox_status, state=state))
    assert_sdk_decodes(answer)
    assert (answer["status"], answer["status_reason"]) == (status, reason)
    assert answer["phase"] == phase  # our own field: Paused is told apart from Stopped


def test_unschedulable_is_insufficient_capacity() -> None:
    condition = {"type": "Scheduled", "status": "False", "reason": "Unschedulable"}
    status = {"phase": "Pending", "conditions": [condition]}
    answer = sandbox_object(stored(translate(body("minimal")), status))
    assert answer["status_reason"] == "insufficient_capacity"


def test_failure_message_only_when_failed() -> None:
    t = translate(body("minimal"))
    failed = sandbox_object(stored(t, {"phase": "Failed", "message": "image not found: x"}))
    assert failed["last_failure_message"] == "image not found: x"
    crashed = sandbox_object(stored(t, {"phase": "Crashed", "exitStatus": {"success": False}}))
    assert crashed["last_failure_message"] == "sandbox crashed"
    running = sandbox_object(stored(t, {"phase": "Running", "message": "old failure"}))
    assert running["last_failure_message"] is None


@pytest.mark.parametrize("fixture", ["full", "v06-env", "minimal", "mount-bind", "network-none"])
def test_round_trip_keeps_env_workdir_user_and_shell(fixture: str) -> None:
    b = body(fixture)
    answer = sandbox_object(stored(translate(b), {"phase": "Running"}))
    assert_sdk_decodes(answer)
    runtime = answer["spec"]["runtime"]
    assert answer["spec"]["env"] == b["env"]
    assert runtime["workdir"] == b["runtime"]["workdir"]
    assert runtime["user"] == b["runtime"]["user"]
    assert runtime["shell"] == (b["runtime"]["shell"] or "/bin/sh")
    assert answer["spec"]["reference"] == b.get("reference") or b["image"]["reference"]


def test_round_trip_of_the_full_body_keeps_every_option_that_is_echoed() -> None:
    b = body("full")
    spec = sandbox_object(stored(translate(b), {"phase": "Running"}))["spec"]
    for key in ("entrypoint", "cmd", "log_level"):
        assert spec["runtime"][key] == b["runtime"][key]
    assert spec["resources"] == b["resources"]
    assert spec["labels"] == b["labels"]
    assert spec["lifecycle"] == b["lifecycle"]
    assert spec["pull_policy"] == b["pull_policy"]
    assert spec["init"] == b["init"]
    assert spec["network"]["policy"] == body("network-default")["network"]["policy"]
    assert sorted(spec["mounts"], key=str) == sorted(b["mounts"], key=str)


def test_network_policies_round_trip_to_the_sdks_own_shapes() -> None:
    for fixture in ("network-none", "network-all", "network-default"):
        b = body(fixture)
        spec = sandbox_object(stored(translate(b)))["spec"]
        assert spec["network"]["policy"] == b["network"]["policy"]


@pytest.mark.parametrize("policy", ["None", "All", "PublicOnly"])
def test_rules_round_trip_through_the_sdk_shape(policy: str) -> None:
    b = body("network-rules")
    t = translate(b)
    t.spec["network"]["policy"] = policy
    echoed = sandbox_object(stored(t))["spec"]["network"]
    again = translate(changed(body("minimal"), ("network",), echoed)).spec["network"]
    assert again == t.spec["network"]


def test_object_spec_never_carries_secret_values() -> None:
    t = translate(body("full"))
    sandbox = stored(t, {"phase": "Running"})
    sandbox["spec"]["env"].append(
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    )
    answer = sandbox_object(sandbox)
    text = json.dumps(answer)
    for value in t.secret_data.values():
        assert value not in text
    assert "FAKE-SECRET-VALUE" not in text
    assert "FROM_SECRET" not in text
    entries = answer["spec"]["network"]["secrets"]["entries"]
    assert entries == [
        {
            "env_var": "OPENAI_API_KEY",
            "placeholder": "$MSB_OPENAI_API_KEY",
            "allowed_hosts": [
                {"type": "exact", "value": "api.openai.com"},
                {"type": "wildcard", "value": "*.openai.com"},
            ],
            "substitution": {"headers": True, "query": False, "body": False},
            "passthrough_hosts": [],
            "require_tls_identity": True,
        }
    ]


@pytest.mark.parametrize(
    ("image", "source"),
    [
        ({"bind": {"path": "/srv/root"}}, {"source": "bind", "path": "/srv/root"}),
        (
            {"disk": {"path": "/img/a.img", "format": "qcow2"}},
            {"source": "disk_image", "path": "/img/a.img", "format": "qcow2", "fstype": None},
        ),
        (
            {"disk": {"path": "/img/a.qcow2", "fstype": "ext4"}},
            {"source": "disk_image", "path": "/img/a.qcow2", "format": "qcow2", "fstype": "ext4"},
        ),
        (
            {"disk": {"path": "/img/a.img"}},
            {"source": "disk_image", "path": "/img/a.img", "format": "raw", "fstype": None},
        ),
    ],
)
def test_roots_made_with_kubectl_are_shown_in_the_sdks_shape(
    image: JsonDict, source: JsonDict
) -> None:
    sandbox = {
        "metadata": {"name": "k", "namespace": "n", "uid": UID, "creationTimestamp": "x"},
        "spec": {"image": image, "memory": "1Gi"},
    }
    answer = sandbox_object(sandbox)
    assert_sdk_decodes(answer)
    assert {k: answer["spec"][k] for k in source} == source
    assert answer["spec"]["resources"] == {"vcpus": 1, "memory_mib": 1024}
    assert answer["created_at"] == "1970-01-01T00:00:00Z"  # unparsable: a safe placeholder


@pytest.mark.parametrize(
    "sandbox",
    [
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {"name": 5, "labels": [1]}, "spec": {"env": "x", "volumes": [1, None]}},
        {"metadata": {}, "spec": {"image": {"oci": 1}, "memory": "lots", "cpus": True}},
        {"spec": {"network": {"policy": ["x"]}, "secrets": [{"env": "A", "allowHosts": "h"}]}},
    ],
)
def test_malformed_objects_still_give_json_the_sdk_decodes(sandbox: JsonDict) -> None:
    assert_sdk_decodes(sandbox_object(sandbox))


# --- redaction --------------------------------------------------------------------------------

SECRET_VALUES = [
    "FAKE-SECRET-VALUE",
    "FAKE-REGISTRY-PASSWORD",
    "FAKE-TOKEN-VALUE",
    "FAKE-V06-SECRET",
    "FAKE-V06-PASSWORD",
]


@pytest.mark.parametrize("path", sorted(BODIES.glob("*.json")), ids=lambda p: p.stem)
def test_redaction_never_leaks_a_captured_secret(path: Path) -> None:
    b = json.loads(path.read_text())
    text = json.dumps(redacted(b))
    for value in SECRET_VALUES:
        assert value not in text


def test_redaction_keeps_the_shape_and_everything_else() -> None:
    b = body("full")
    clean = redacted(b)
    assert clean["network"]["secrets"]["entries"][0]["value"] == "<redacted>"
    assert clean["registry"] == {"mode": "inline", "username": "bob", "password": "<redacted>"}
    clean["network"]["secrets"]["entries"][0]["value"] = b["network"]["secrets"]["entries"][0][
        "value"
    ]
    clean["registry"]["password"] = b["registry"]["password"]
    assert clean == b
    assert b["registry"]["password"] == "FAKE-REGISTRY-PASSWORD"  # the input is not modified


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: {"network": {"secrets": {"entries": {"x": {"value": s}}}}},
        lambda s: {"network": {"secrets": [{"value": s}]}},
        lambda s: {"network": {"secrets": {"entries": [{"value": [s, {"k": s}]}]}}},
        lambda s: {"registry": {"password": {"nested": s}}},
        lambda s: {"registry": [s]},
        lambda s: {"unknown": {"token": s, "Password": s}},
        lambda s: {"labels": {"secrets": {"value": s}}},
    ],
)
def test_redaction_of_misplaced_or_malformed_secrets(mangle: Any) -> None:
    secret = "FAKE-HIDDEN-7c1f"
    assert secret not in json.dumps(redacted(mangle(secret)))


def test_redaction_of_hostile_shapes() -> None:
    deep: Any = "FAKE-DEEP"
    for _ in range(500):
        deep = {"a": [deep]}
    assert "FAKE-DEEP" not in json.dumps(redacted(deep))
    assert redacted([1, 2]) == {"body": "<not a JSON object: list>"}  # type: ignore[arg-type]


def test_deeply_nested_rule_destination_is_refused_by_field() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = {"d": deep}
    b = changed(body("network-default"), ("network", "policy", "rules", 0, "destination"), deep)
    assert refusal(b).field == "network.policy.rules[0].destination.d"  # an unknown key
    b = changed(body("network-rules"), ("network", "policy", "rules", 0, "destination"), deep)
    assert refusal(b).field == "network.policy.rules[0].destination.d"
    deep = {"domain": deep}
    b = changed(body("network-rules"), ("network", "policy", "rules", 0, "destination"), deep)
    assert refusal(b).field == "network.policy.rules[0].destination.domain"


def test_a_translation_printed_into_a_log_shows_no_secret_value() -> None:
    t = translate(body("full"))
    assert "FAKE-SECRET-VALUE" not in repr(t)
    assert "FAKE-REGISTRY-PASSWORD" not in repr(t)
    assert "secret_data=<2 keys>" in repr(t)


def test_a_fork_shows_its_sources_image_to_the_sdk() -> None:
    fork = {
        "metadata": {"name": "copy", "namespace": "team-a", "uid": "u",
                     "creationTimestamp": "2026-11-22T14:00:00Z"},
        "spec": {"image": {"sandbox": {"name": "origin"}}},
        "status": {"phase": "Running", "image": {"reference": "python:3.12", "digest": "d"}},
    }  # fmt: skip
    answer = sandbox_object(fork)
    assert_sdk_decodes(answer)
    assert (answer["spec"]["source"], answer["spec"]["reference"]) == ("oci", "python:3.12")


# --- Sandbox.restore(snapshot, name=...) ---------------------------------------------------------


def test_a_restore_becomes_a_sandbox_of_the_snapshot() -> None:
    t = translate(body("restore-snapshot"))
    assert t.name == "fork3"
    assert t.snapshot == "base-state"
    assert t.spec["image"] == {"snapshot": {"name": "base-state"}}  # no pull policy: pinned
    assert t.spec["cpus"] == 1


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("disk_snapshot_ref", "type"), "host_volume", "disk_snapshot_ref.type"),
        (("disk_snapshot_ref", "id"), "../etc", "disk_snapshot_ref.id"),
        (("disk_snapshot_ref", "extra"), 1, "disk_snapshot_ref.extra"),
        (("reference",), "alpine", "reference"),
        (("patches",), [{"type": "mkdir", "path": "/x"}], "patches"),
        (("registry",), {"auth": {"username": "u", "password": "p"}}, "registry"),
        (("source",), "oci", "disk_snapshot_ref"),
    ],
)
def test_restore_refusals_name_the_body_field(
    path: tuple[str | int, ...], value: Any, field: str
) -> None:
    error = refusal(changed(body("restore-snapshot"), path, value))
    assert error.field == field
