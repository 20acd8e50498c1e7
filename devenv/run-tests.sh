#!/usr/bin/env bash
# Runs the quality gates and the whole test suite. `run-tests.sh lint` runs the gates only.
# Called by `make test` after `make deps`; .ci/run calls `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export KUBESANDBOX_CACHE="${KUBESANDBOX_CACHE:-$HOME/.cache/kubesandbox}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(bash devenv/cargo-target-dir)}"
export PATH="$PWD/.venv/bin:$PATH"

# The import packages, read from setup.py's folder map (the one place that names them).
mapfile -t packages < <(python - <<'PY'
import ast, pathlib
tree = ast.parse(pathlib.Path("setup.py").read_text())
roots = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "ROOTS")
for name, folder in ast.literal_eval(roots).items():
    root = pathlib.Path(folder)  # setup.py's rule: a package has __init__.py or py.typed
    if (root / "__init__.py").is_file() or (root / "py.typed").is_file():
        print(name)
PY
)

step() { printf '\n== %s\n' "$*" >&2; }

step "ruff"
ruff check .
ruff format --check .

step "mypy --strict"
# mypy takes packages or files, not both: the packages by import name, then the rest by path.
package_args=()
for p in "${packages[@]}"; do package_args+=(-p "$p"); done
mypy "${package_args[@]}"
file_args=()
for d in tests bench examples; do
  [ -d "$d" ] && [ -n "$(find "$d" -name '*.py' -print -quit)" ] && file_args+=("$d")
done
[ "${#file_args[@]}" -eq 0 ] || mypy "${file_args[@]}"

step "import-linter"
lint-imports

[ "${1:-}" = lint ] && exit 0

if [ -f guest-agent/Cargo.toml ]; then
  step "cargo test (guest agent)"
  cargo test --manifest-path guest-agent/Cargo.toml --workspace --quiet
fi

step "pytest"
# shellcheck disable=SC2086  # PYTEST_ARGS is a word list on purpose (e.g. "-k relay -x")
exec pytest -p no:cacheprovider ${PYTEST_ARGS:-}
