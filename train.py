"""Train a causal LM with an adaptive optimizer, from a JSON config.

    python train.py configs/quickstart.json
    accelerate launch --multi_gpu --num_processes 2 train.py configs/quickstart.json

The config's keys are documented in docs/training.md (and in
adaptiverl/trainer/config.py). A run, top to bottom:
"""

import sys

from adaptiverl.trainer.config import ConfigError, load_config
from adaptiverl.trainer.run import train

if len(sys.argv) != 2:
    sys.exit("usage: python train.py CONFIG.json")

# 1. Read and validate the config: unknown keys, wrong types, a missing
#    TRAIN_FILE or a precision the machine cannot do fail here, before any
#    model loads.
try:
    config = load_config(sys.argv[1])
except ConfigError as err:
    sys.exit(f"train.py: {err}")

# 2. Load the model (LoRA / quantized as asked) and the data, build the
#    adaptive optimizer, run GRPO / RLOO / SFT with AdaptiveCallback feeding the
#    optimizer each step's loss and reward, save checkpoints, the final model
#    and OUTPUT_DIR/dynamics.png.
result = train(config)

# 3. Where things are (printed once, by the main process of a distributed launch).
if result.trainer.is_world_process_zero():
    print(f"done: {result.global_step} steps in {result.runtime_s:.0f} s")
    print(f"model, train_config.json, adaptive_history.jsonl, dynamics.png -> {result.output_dir}")
