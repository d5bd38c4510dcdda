#!/usr/bin/env bash
# Create (or reuse) .venv and install adaptiverl with the extras named in $1
# (default: "dev"). Takes the CPU torch wheel that lies on these machines'
# disk instead of letting pip resolve a multi-GB CUDA build; elsewhere set
# ADAPTIVERL_TORCH_SPEC to whatever torch you want (e.g. "torch" for CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=".venv/.adaptiverl-installed-$extras"
hash=$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" install "${ADAPTIVERL_TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" install -c constraints.txt -e ".[$extras]"
echo "$hash" > "$stamp"
