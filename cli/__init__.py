"""``kubectl-sandbox``: the ``kubectl sandbox`` plugin (docs/cli.md).

It talks to the gateway only (REST and the agent WebSocket), with the caller's own
Kubernetes credentials from their kubeconfig, so RBAC decides what it may do.
"""
