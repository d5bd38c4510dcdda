"""Train a learned reward model with TRL's RewardTrainer on a local preference file.

Recipe (read top to bottom):

1. Preferences: a JSONL file with one ``{"prompt", "chosen", "rejected"}`` object per line (the
   prompt is optional; TRL prepends it to both answers). ``preferences.jsonl`` next to this
   script is a small example: polite, helpful answers preferred to rude, unhelpful ones.
2. Model: any base checkpoint (name or path). TRL loads it as
   ``AutoModelForSequenceClassification`` with one output, the scalar reward ``r(x)``.
3. Loss: TRL's Bradley-Terry pairwise loss ``-log sigmoid(r(chosen) - r(rejected))``
   (Ouyang et al., "Training language models to follow instructions with human feedback", 2022).
4. Save the model and tokenizer to ``--out``; use it as a reward with
   ``{"type": "learned", "model": "<out>"}`` (``adaptiverl.rewards.learned.ClassifierReward``:
   one logit, so the reward is the logit itself).

Usage::

    python reward_models/train_reward_model.py --model path/or/name --out runs/rm \\
        [--data reward_models/preferences.jsonl] [--steps 200] [--lr 5e-5] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "preferences.jsonl"


def load_preferences(path: str | Path) -> list[dict[str, str]]:
    """Rows of a preference JSONL, checked: every line needs string ``chosen`` and ``rejected``."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
            for key in ("chosen", "rejected"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{path}:{lineno}: key {key!r} must be a string")
            rows.append({k: row[k] for k in ("prompt", "chosen", "rejected") if k in row})
    if not rows:
        raise ValueError(f"{path}: no preference pairs")
    return rows


def train_reward_model(base_model: str, out_dir: str | Path, data: str | Path = DEFAULT_DATA,
                       steps: int = 200, learning_rate: float = 5e-5, batch_size: int = 8,
                       max_length: int = 256, seed: int = 0, use_cpu: bool = False) -> Path:
    """Train ``base_model`` as a reward model on ``data`` and save it to ``out_dir``."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    out_dir = Path(out_dir)
    dataset = Dataset.from_list(load_preferences(data))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = RewardConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=steps, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, max_length=max_length, seed=seed,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], use_cpu=use_cpu,
        model_init_kwargs={"pad_token_id": tokenizer.pad_token_id},
    )
    trainer = RewardTrainer(model=base_model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base checkpoint (name or path)")
    parser.add_argument("--out", required=True, help="folder to save the reward model to")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="preference JSONL")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU exists")
    a = parser.parse_args()
    out = train_reward_model(a.model, a.out, a.data, a.steps, a.lr, a.batch_size, a.max_length,
                             use_cpu=a.cpu)
    print(f"reward model saved to {out}; use it as {{'type': 'learned', 'model': '{out}'}}")


if __name__ == "__main__":
    main()
