#!/usr/bin/env bash
# The Python virtualenv at .venv with the project installed editable (strict mode: a link tree
# by import name that mypy and import-linter can read). Dependencies are reinstalled only when
# pyproject.toml changed; the project itself every time, so new modules are linked.
set -euo pipefail
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,lint]' --config-settings editable_mode=strict
  rm -f .venv/.deps-*; touch "$stamp"
else
  .venv/bin/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict
fi
