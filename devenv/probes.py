"""Waiting for a component's health endpoint, bounded, failing with the component's own log.

Plain ``http.client`` on purpose: it ignores ``*_proxy`` environment variables (a proxy must
never see loopback health checks) and emits no third-party warnings.
"""

from __future__ import annotations

import http.client
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubesandbox_devenv.certs import CertPair
from kubesandbox_devenv.processes import ManagedProcess

POLL_INTERVAL = 0.1


class ComponentFailedError(RuntimeError):
    """A component exited, or did not become healthy in time. The message has its log tail."""


@dataclass(frozen=True)
class HealthProbe:
    """``GET path`` on ``127.0.0.1:port`` answering 200 means healthy."""

    port: int
    path: str
    ca: Path | None = None
    client: CertPair | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client is not None:
            context.load_cert_chain(str(self.client.cert), str(self.client.key))
        return context

    def check(self, timeout: float = 2.0) -> tuple[bool, str]:
        """(healthy, what was observed) with one request."""
        context = self.ssl_context()
        connection: http.client.HTTPConnection
        if context is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        else:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=context
            )
        try:
            connection.request("GET", self.path)
            response = connection.getresponse()
            body = response.read(2048).decode(errors="replace")
        except (OSError, http.client.HTTPException) as error:
            return False, f"{type(error).__name__}: {error}"
        finally:
            connection.close()
        return response.status == 200, f"HTTP {response.status}: {body.strip()[-500:]}"


class Probe(Protocol):
    """Anything that can say once whether a component serves (``HealthProbe`` and others)."""

    @property
    def path(self) -> str:
        """What is probed, for messages."""

    def check(self, timeout: float = 2.0) -> tuple[bool, str]: ...


def wait_healthy(process: ManagedProcess, probe: Probe, deadline: float) -> float:
    """Poll until ``probe`` passes; returns the seconds waited. ``deadline`` is monotonic."""
    started = time.monotonic()
    observed = "not probed yet"
    while True:
        if not process.is_alive():
            raise ComponentFailedError(
                f"{process.name} exited (status {process.exit_code()}) before it was healthy; "
                f"last lines of {process.log_path}:\n{process.log_tail()}"
            )
        healthy, observed = probe.check()
        if healthy:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ComponentFailedError(
                f"{process.name} not healthy after {time.monotonic() - started:.1f}s "
                f"(GET {probe.path}: {observed}); last lines of {process.log_path}:\n"
                f"{process.log_tail()}"
            )
        time.sleep(POLL_INTERVAL)
