"""The gateway: microsandbox's cloud REST subset (PROTOCOL.md §3) mapped onto Sandbox objects.

The unmodified microsandbox SDKs and ``msb`` CLI point their cloud backend at it. It keeps no
state of its own: the ``Sandbox`` object is the state. :mod:`.translate` turns request bodies
into Sandbox objects and back (pure); :mod:`.app` is the aiohttp application (authentication,
authorization, routes, the agent WebSocket pipe); :mod:`.main` is the entry point
``kubesandbox-gateway``. See docs/gateway.md.
"""
