"""``kubectl-sandbox``: the entry point (docs/cli.md)."""


def main() -> None:
    raise SystemExit("kubectl-sandbox: not built yet")
