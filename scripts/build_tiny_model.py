"""Build the quickstart's tiny GPT-2 offline, optionally pre-trained briefly on Python's docstrings.

    python scripts/build_tiny_model.py models/tiny-gpt2 --pretrain-steps 600

Writes a config, weights and a BPE tokenizer with ``save_pretrained`` (see
``adaptiverl.tiny.build_tiny_gpt2``), so ``from_pretrained("models/tiny-gpt2")``
loads it exactly as ``from_pretrained("gpt2")`` loads the hub model. The short
causal-LM pre-training (plain ``torch.optim.AdamW``, next-token cross-entropy
on packed blocks of ``adaptiverl.tiny.python_corpus()``) makes completions
English-like instead of random tokens, so the RL rewards have something to
shape.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def pretrain(folder: Path, steps: int, block: int = 64, batch: int = 16, lr: float = 3e-3,
             seed: int = 0) -> float:
    """Next-token training on packed corpus blocks; returns the mean loss of the last 20 steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptiverl.tiny import python_corpus

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer(f" {tokenizer.eos_token} ".join(python_corpus()))["input_ids"]
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        rows = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    model.save_pretrained(folder)
    return float(torch.stack(losses[-20:]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="models/tiny-gpt2")
    parser.add_argument("--pretrain-steps", type=int, default=600,
                        help="causal-LM steps on the docstring corpus (0: keep random weights)")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 is fastest for this model on a small CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from adaptiverl.tiny import build_tiny_gpt2

    start = time.perf_counter()
    torch.manual_seed(0)
    folder = build_tiny_gpt2(args.out_dir, n_layer=args.n_layer, n_embd=args.n_embd)
    if args.pretrain_steps > 0:
        loss = pretrain(folder, args.pretrain_steps)
        print(f"pre-trained {args.pretrain_steps} steps, final loss {loss:.3f}")
    print(f"tiny GPT-2 written to {folder} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
