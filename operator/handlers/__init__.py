"""Kopf handlers: parse the body, call one function of :mod:`..control`, return.

Importing this package registers the handlers with Kopf's default registry.
"""

from kubesandbox_operator.handlers import ephemeral, pool, sandbox, snapshot

__all__ = ["ephemeral", "pool", "sandbox", "snapshot"]
