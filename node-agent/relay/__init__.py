"""The agent relay: one guest channel, many clients (PROTOCOL.md §2)."""

from kubesandbox_node.relay.relay import SLOT_COUNT, SLOT_STEP, Relay, RelayClosedError

__all__ = ["SLOT_COUNT", "SLOT_STEP", "Relay", "RelayClosedError"]
