"""Fixtures of the gateway app tests (test_app*.py): a fake apiserver, fake reviews, a fake node
agent and the translate stand-in. Nothing here is autouse, so translate's own tests beside
them are untouched; app tests opt in with ``pytestmark = APP_FIXTURES``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from kubesandbox_gateway import app as app_module
from kubesandbox_gateway import translate
from kubesandbox_gateway.app import Gateway
from kubesandbox_gateway.routes import make_app
from tests.unit.gateway import fakes

AppClient = TestClient[web.Request, web.Application]

SA_TOKEN = "token-runner"
SA_USER = "system:serviceaccount:team-a:runner"
ALICE_TOKEN = "token-alice"
NOBODY_TOKEN = "token-nobody"
NOBODY_USER = "system:serviceaccount:team-a:nobody"
ALL_VERBS = "create,get,list,update,delete"
APP_FIXTURES = pytest.mark.usefixtures("translate_stand_in")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def kube() -> fakes.FakeKube:
    return fakes.FakeKube()


@pytest.fixture
def auth() -> fakes.FakeAuth:
    auth = fakes.FakeAuth()
    auth.add_user(SA_TOKEN, SA_USER)
    auth.add_user(ALICE_TOKEN, "alice")
    auth.add_user(NOBODY_TOKEN, NOBODY_USER)
    auth.grant(SA_USER, ALL_VERBS, "team-a")
    auth.grant(SA_USER, "create", "team-a", resource="sandboxes/exec")
    auth.grant("alice", ALL_VERBS, "team-b")
    return auth


@pytest.fixture
def translate_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app is tested against translate's contract, not its rules (tested on their own)."""
    monkeypatch.setattr(translate, "sandbox_from_create", fakes.sandbox_from_create)
    monkeypatch.setattr(translate, "sandbox_object", fakes.sandbox_object)
    monkeypatch.setattr(translate, "redacted", fakes.redacted)


@contextmanager
def gateway_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """The gateway's log events. Its module logger is swapped for a fresh proxy first: a
    logger already used under ``cache_logger_on_first_use`` would bypass ``capture_logs``."""
    monkeypatch.setattr(app_module, "log", structlog.get_logger("kubesandbox.gateway"))
    with capture_logs() as logs:
        yield logs


@pytest.fixture
def gateway(kube: fakes.FakeKube, auth: fakes.FakeAuth) -> Gateway:
    return Gateway(kube, auth, poll_interval=0.01)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AppClient]:
    async with TestClient(TestServer(make_app(gateway))) as client:
        yield client


def running_sandbox(
    kube: fakes.FakeKube, name: str = "s1", namespace: str = "team-a", node: str = "node-1"
) -> dict[str, Any]:
    return kube.put(
        "sandboxes",
        namespace,
        {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": name, "labels": {"team": "x"}},
            "spec": {"image": {"oci": "python"}},
            "status": {"phase": "Running", "nodeName": node, "observedGeneration": 1},
        },
    )


def announce_node_agent(
    kube: fakes.FakeKube,
    endpoint: str,
    node: str = "node-1",
    renewed: datetime | None = None,
    certificate: str | None = None,
) -> None:
    renewed = renewed or datetime.now(UTC)
    annotations = {"kubesandbox.dev/endpoint": endpoint}
    if certificate is not None:
        annotations["kubesandbox.dev/tls-certificate"] = certificate
    kube.put(
        "leases",
        "kubesandbox-system",
        {
            "metadata": {"name": f"node-agent-{node}", "annotations": annotations},
            "spec": {
                "holderIdentity": f"{node}/x",
                "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "leaseDurationSeconds": 40,
            },
        },
    )
