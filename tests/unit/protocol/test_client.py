import pytest

from kubesandbox_protocol import AgentClient, AgentError
from tests.support.relayenv import relay_env


async def test_stdin_is_streamed_in_chunks_and_closed() -> None:
    data = bytes(range(256)) * 12_000  # ~3 MiB: several stdin frames
    async with relay_env() as env, await AgentClient.connect(env.socket) as client:
        result = await client.run("cat", stdin=data)
        assert result.stdout == data
        assert result.code == 0


async def test_signal_reports_128_plus_signal() -> None:
    async with relay_env() as env, await AgentClient.connect(env.socket) as client:
        session = await client.exec("sleep", ["100"], keep_stdin_open=True)
        await session.signal(9)
        assert (await session.wait()).code == 137


async def test_unknown_request_surfaces_the_agent_error() -> None:
    async with relay_env() as env, await AgentClient.connect(env.socket) as client:
        with pytest.raises(AgentError, match="List"):
            await client.list_dir("/")


async def test_connect_to_a_missing_socket_fails_fast() -> None:
    with pytest.raises(FileNotFoundError):
        await AgentClient.connect("/nonexistent/agent.sock", connect_timeout=2)
