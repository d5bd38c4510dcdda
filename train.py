"""Train a causal LM with an adaptive optimizer, from a JSON or YAML config plus overrides.

    python train.py configs/quickstart.json
    python train.py configs/quickstart.json --learning_rate 1e-3 --max_steps 50
    python train.py --config my_grpo.yaml --top_p 0.9 --loss_type dr_grpo
    accelerate launch --multi_gpu --num_processes 2 train.py configs/quickstart.json

Every setting has one name, TRL's (`learning_rate`, `per_device_train_batch_size`,
`dataset_name`, any GRPOConfig / RLOOConfig / SFTConfig or ModelConfig field); the seed's keys
(`LRATE`, `BATCH_SIZE`, ...) are its aliases. `python train.py --help` lists our settings by
section, `--help-all` every flag. They are documented in
docs/training.md (and in adaptiverl/trainer/config.py). A run, top to bottom:
"""

import sys

from adaptiverl.trainer.config import ConfigError, config_parser, help_text, parse_command_line

# --help: our settings by section, each with its seed alias; --help-all: every TRL flag too.
if "--help-all" in sys.argv[1:]:
    config_parser().print_help()
    sys.exit(0)
if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
    print(help_text())
    sys.exit(0)

from adaptiverl.trainer.run import train  # noqa: E402  (transformers/TRL load after --help)

# 1. Read the file and apply the command line's overrides: unknown keys, wrong types,
#    non-finite numbers, bad values, duplicate keys or a missing TRAIN_FILE fail here.
# 2. train() first checks what needs more than the config (run.preflight): the MODEL folder, the
#    data (columns, types, splits), the trainer's and the optimizer's arguments, the LoRA targets, the machine,
#    the checkpoint to resume. Each failure is one line naming the key, before any model loads
#    and before anything is written. Then it loads the model (LoRA / quantized as asked) and the
#    data, builds the adaptive optimizer through the trainer, runs GRPO / RLOO / SFT with
#    AdaptiveCallback feeding the optimizer each step's loss and reward, and saves checkpoints,
#    the final model, its model card and OUTPUT_DIR/dynamics.png.
try:
    config = parse_command_line(sys.argv[1:])
    result = train(config)
except ConfigError as err:
    sys.exit(f"train.py: {err}")

# 3. Where things are (printed once, by the main process of a distributed launch). A RESUME of a
#    run already at its last step trained nothing and has said so.
if not result.already_finished and result.trainer.is_world_process_zero():
    print(f"done: {result.global_step} steps in {result.runtime_s:.0f} s")
    written = "model, README.md, train_config.json, adaptive_history.jsonl" + (", dynamics.png" if result.plot else "")
    print(f"{written} -> {result.output_dir}")
