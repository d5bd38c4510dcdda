#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
