"""The development environment: a real Kubernetes control plane on loopback.

Used by the pytest fixtures (``tests/conftest.py``) and by ``make up`` (``cli``). The layers,
bottom up: ``binaries`` finds (or builds) the pinned control-plane binaries; ``certs`` makes a
throw-away PKI; ``processes`` runs one child process with a pid file, its own process group
and a bounded stop; ``components`` turns the PKI and ports into the command line of each
control-plane process; ``controlplane`` starts them in order, waits on their health endpoints
and registers kubelet-less Nodes; ``cli`` keeps all of that running detached between commands.
"""
