"""The node agent's HTTPS API (docs/node-agent-api.md): ``app`` builds the aiohttp
application; ``services`` wires runtime, sampler, status writer and Lease around it."""
