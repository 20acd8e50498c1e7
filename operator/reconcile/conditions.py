"""Conditions in the shape of ``metav1.Condition``, computed and merged without I/O.

``lastTransitionTime`` moves only when ``status`` changes; reason or message changes keep it.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubesandbox_api.conditions import ConditionStatus, ConditionType, Reason

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str

    @classmethod
    def true(cls, type_: ConditionType, reason: Reason, message: str) -> "Condition":
        return cls(type_, ConditionStatus.TRUE, reason, message)

    @classmethod
    def false(cls, type_: ConditionType, reason: Reason, message: str) -> "Condition":
        return cls(type_, ConditionStatus.FALSE, reason, message)


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def render(wanted: Condition, existing: list[JsonDict], generation: int, now: datetime) -> JsonDict:
    """The condition as it should be written, keeping the transition time when unchanged."""
    previous = next((c for c in existing if c.get("type") == wanted.type), None)
    transition = (
        previous["lastTransitionTime"]
        if previous
        and previous.get("status") == wanted.status
        and previous.get("lastTransitionTime")
        else timestamp(now)
    )
    return {
        "type": str(wanted.type),
        "status": str(wanted.status),
        "reason": str(wanted.reason),
        "message": wanted.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }


def changed(rendered: JsonDict, existing: list[JsonDict]) -> bool:
    """Whether writing ``rendered`` would change anything (the transition time included)."""
    previous = next((c for c in existing if c.get("type") == rendered["type"]), None)
    return previous is None or any(previous.get(k) != v for k, v in rendered.items())
