"""The microsandbox SDK's wire vocabulary, as observed (docs/msb-compat.md), in one place.

Both directions of the translation speak it: :mod:`.translate` reads these values in create
bodies, :mod:`.msb_object` writes them into the Sandbox JSON the SDK decodes. Keeping them
together means a value the SDK sends is, by construction, a value we send back.
"""

from __future__ import annotations

from typing import Any

LOG_LEVELS = {"trace": "Trace", "debug": "Debug", "info": "Info", "warn": "Warn", "error": "Error"}
"""SDK ``runtime.log_level`` → ``spec.logLevel``."""

PULL_POLICIES = {"always": "Always", "if_missing": "IfMissing", "never": "Never"}
"""SDK ``pull_policy`` → ``spec.image.pullPolicy``."""

DEFAULT_VIOLATION: dict[str, Any] = {"type": "block_and_log"}
"""``network.secrets.violation_action`` (0.6: ``on_violation``) when the option is not used."""

VIOLATIONS = {
    "block": "Block",
    "block_and_log": "BlockAndLog",
    "block_and_terminate": "BlockAndTerminate",
}
"""SDK violation ``type`` (``Sandbox.create(secret_violation_action=...)``) →
``spec.network.secretViolationAction`` and ``spec.secrets[].violationAction``."""

DEFAULT_SUBSTITUTION: dict[str, Any] = {"headers": True, "query": False, "body": False}
"""What the 0.7 SDK sends for ``SecretSubstitution()``: the value goes into request headers."""

DEFAULT_INJECTION: dict[str, Any] = {
    "headers": True,
    "basic_auth": True,
    "query_params": False,
    "body": False,
}
"""The 0.6 SDK's equivalent (``SecretInjection()``)."""

PUBLIC_POLICY: dict[str, Any] = {
    "default_egress": "deny",
    "default_ingress": "allow",
    "rules": [
        {
            "direction": "egress",
            "destination": {"group": "host"},
            "protocols": ["udp", "tcp"],
            "ports": [{"start": 53, "end": 53}],
            "action": "allow",
        },
        {
            "direction": "egress",
            "destination": {"group": "public"},
            "protocols": [],
            "ports": [],
            "action": "allow",
        },
    ],
}
"""Exactly what the SDK sends for its default public profile (fixture network-default)."""

POLICIES: dict[str, dict[str, Any]] = {
    "None": {"default_egress": "deny", "default_ingress": "deny", "rules": []},
    "All": {"default_egress": "allow", "default_ingress": "allow", "rules": []},
    "PublicOnly": PUBLIC_POLICY,
}
"""``spec.network.policy`` → the SDK policy that means it (``Network.none()``, ``Network()``,
``Network.allow_all()``)."""

SDK_STATUSES = frozenset({"created", "starting", "running", "stopping", "stopped", "failed"})
"""The only ``status`` strings the SDK decodes (anything else fails the whole response)."""

SDK_STATUS_REASONS = frozenset({"scheduling", "insufficient_capacity"})
"""The only non-null ``status_reason`` strings the SDK decodes (``paused`` is not one)."""


def default_placeholder(env: str) -> str:
    """The placeholder the SDK fills in for a secret when none is given."""
    return f"$MSB_{env}"
