"""``kubesandbox-gateway``: the entry point (flags in docs/gateway.md)."""


def main() -> None:
    raise SystemExit("kubesandbox-gateway: not built yet")
