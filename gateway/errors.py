"""The gateway's error answers: ``{"error": {"code", "message"}}`` with microsandbox's codes.

The SDK turns the code into its own exception (checked against microsandbox 0.7.11):
``sandbox_not_found`` → ``SandboxNotFoundError``, ``name_already_exists`` →
``SandboxAlreadyExistsError``, ``invalid_request`` / ``invalid_sandbox_config`` →
``InvalidConfigError``, anything else → ``CloudHttpError`` or ``MicrosandboxError`` with our
message. So every refusal is one :class:`GatewayError`, and every apiserver failure is mapped
once, here, by :func:`from_kube`.
"""

from __future__ import annotations

from aiohttp import web

from kubesandbox_kube.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
)


class GatewayError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def response(self) -> web.Response:
        response = error_response(self.status, self.code, self.message)
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def rate_limited(seconds: int) -> GatewayError:
    return GatewayError(
        429,
        "rate_limited",
        f"too many invalid tokens from this address; retry in {seconds}s",
        retry_after=seconds,
    )


def not_found(what: str) -> GatewayError:
    return GatewayError(404, "sandbox_not_found", f"sandbox {what} not found")


def invalid_request(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message)


def unreachable(message: str) -> GatewayError:
    return GatewayError(502, "orchestrator_unreachable", message)


def from_kube(error: KubeError, *, what: str = "") -> GatewayError:
    """The answer for an apiserver failure on a request the caller was allowed to make."""
    if isinstance(error, NotFound):
        return not_found(what) if what else GatewayError(404, "sandbox_not_found", error.message)
    if isinstance(error, AlreadyExists):
        return GatewayError(409, "name_already_exists", f"a sandbox named {what} already exists")
    if isinstance(error, Conflict):
        return GatewayError(409, "conflict", f"{error.message}; read the sandbox and try again")
    if isinstance(error, Invalid):
        return GatewayError(422, "invalid_sandbox_config", error.message)
    if error.status == 410:
        return invalid_request("the cursor has expired; list again without it")
    if isinstance(error, Forbidden) or error.status == 401:
        # The caller was allowed (SubjectAccessReview); the gateway's own account was not.
        return unreachable(f"the gateway's service account was refused: {error.message}")
    if error.status == 400:
        return invalid_request(error.message)
    return unreachable(f"the Kubernetes API failed: {error.message}")
