#!/usr/bin/env bash
# The main job, offline: set up .venv, build the tiny GPT-2 (once), then train it with
# GRPO + OnlineAdamW on a composite reward (regex + length + MiniLM cosine).
# Results (checkpoints, TensorBoard events, adaptive_history.jsonl, dynamics.png, README.md model
# card) land in outputs/quickstart/. About 1-3 minutes on a 2-core CPU.
# Extra arguments override the config, e.g.: bash scripts/quickstart.sh --max_steps 50
# (The same quickstart from an installed wheel, anywhere: adaptiverl quickstart [--compare].)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -f models/tiny-gpt2/config.json ]; then
  .venv/bin/adaptiverl build-tiny ./models/tiny-gpt2
fi
# A demo run: re-running it starts over (train.py refuses to replace an earlier run unasked).
exec .venv/bin/python train.py configs/quickstart.json --overwrite_output_dir true "$@"
