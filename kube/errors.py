"""Typed apiserver errors. Each says whether the same request may succeed later."""

from typing import Any


class KubeError(Exception):
    """An apiserver refusal or an unreachable apiserver."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Retrying the same request may succeed (throttling, apiserver trouble, no answer)."""
        return self.status in (0, 429) or self.status >= 500


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    """A resourceVersion precondition failed: re-read and try again."""

    @property
    def transient(self) -> bool:
        return True


class Invalid(KubeError):
    pass


class Forbidden(KubeError):
    pass


class Unauthorized(KubeError):
    pass


def from_status(status: int, body: dict[str, Any] | None, fallback: str) -> KubeError:
    """The typed error for an apiserver response (a ``Status`` object when it sent one)."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or fallback)
    if status == 404:
        return NotFound(status, reason or "NotFound", message)
    if status == 409:
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
        return kind(status, reason or "Conflict", message)
    if status == 422:
        return Invalid(status, reason or "Invalid", message)
    if status == 403:
        return Forbidden(status, reason or "Forbidden", message)
    if status == 401:
        return Unauthorized(status, reason or "Unauthorized", message)
    return KubeError(status, reason or "Error", message)
