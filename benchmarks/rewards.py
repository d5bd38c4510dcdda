"""Reward throughput: completions/s of a regex + length + cosine composite, and each component's share.

The batch mimics GRPO: ``n / 8`` prompts with 8 completions each; completions and references are
paragraph snippets of Python's own docstrings (``adaptiverl.tiny.python_corpus``), cut to 40-160
characters. The cosine component uses the default all-MiniLM-L6-v2 on the best available device.
Its reference-embedding cache is cleared before every timed call, so every reference is encoded
each time (the conservative case: new prompts every step). Target: >= 1,000 completions/s at
1,024 completions on CPU.

Run: ``python -m benchmarks.rewards [--quick] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, median_time, plot_lines, write_json, write_markdown

GENERATIONS = 8
TARGET = 1000.0


def make_batch(n: int, seed: int = 0) -> dict[str, list[str]]:
    """``n`` completions for ``n / GENERATIONS`` prompts, with a reference per prompt."""
    from adaptiverl.tiny import python_corpus

    rng = random.Random(seed)
    paragraphs = python_corpus()
    prompts, completions, references = [], [], []
    for _ in range(max(1, n // GENERATIONS)):
        ref = rng.choice(paragraphs)
        prompt, reference = ref[:30], ref[:rng.randint(40, 160)]
        for _ in range(GENERATIONS):
            prompts.append(prompt)
            completions.append(rng.choice(paragraphs)[:rng.randint(40, 160)])
            references.append(reference)
    return {"prompts": prompts[:n], "completions": completions[:n], "reference": references[:n]}


def build_composite() -> Any:
    from adaptiverl.rewards import build_rewards

    return build_rewards([
        {"type": "regex", "pattern": r"\b(return|value|object)s?\b", "weight": 0.5},
        {"type": "length", "target": 100, "weight": 0.5},
        {"type": "cosine", "weight": 1.0},
    ], normalize="zscore")


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    composite = build_composite()
    cosine = composite.components[2].fn
    # Quick mode checks the harness only (CI): a MiniLM encode of 1,024 completions alone takes
    # about a minute on a 2-core CPU, so it stays at 64.
    sizes = [32, 64] if quick else [128, 256, 512, 1024]
    repeats = 1 if quick else 7
    rows, series = [], {"composite": [], "regex": [], "length": [], "cosine": []}
    shares: dict[str, float] = {}
    for n in sizes:
        batch = make_batch(n)

        def call_composite(batch=batch) -> None:
            cosine._ref_cache.clear()
            composite(**batch)

        t_total = median_time(call_composite, repeats=repeats, warmup=1)
        row: dict[str, Any] = {"completions": n, "composite_s": t_total, "completions_per_s": n / t_total}
        series["composite"].append(n / t_total)
        times = {}
        for comp in composite.components:
            def call_one(fn=comp.fn, batch=batch) -> None:
                if fn is cosine:
                    cosine._ref_cache.clear()
                fn(**batch)

            times[comp.name] = median_time(call_one, repeats=repeats, warmup=1)
            series[comp.name].append(n / times[comp.name])
            row[f"{comp.name}_s"] = times[comp.name]
        # The composite's own work (normalise, weight, renormalise over None, log), timed alone on
        # precomputed component outputs; shares are of the sum of the parts, which is stable
        # where the end-to-end time on a busy machine is not.
        raw = [comp.fn(**batch) for comp in composite.components]
        times["combine"] = median_time(lambda raw=raw: composite._combine(raw, len(raw[0]), {}),
                                       repeats=repeats, warmup=1)
        row["combine_s"] = times["combine"]
        if n == sizes[-1]:
            parts = sum(times.values())
            shares = {name: t / parts for name, t in times.items()}
        rows.append(row)
    headline = rows[-1]["completions_per_s"]
    # Why the cosine component dominates: a transformer encoder costs ~2 * (non-embedding
    # parameters) FLOPs per token, so the achievable rate is bounded by the machine's FLOP rate.
    encoder = cosine.sentence_model[0].auto_model
    params = sum(p.numel() for name, p in encoder.named_parameters() if "embeddings" not in name)
    texts = batch["completions"] + sorted(set(batch["reference"]))
    tokens = sum(len(ids) for ids in cosine.sentence_model.tokenizer(texts)["input_ids"])
    gflop = 2 * params * tokens / 1e9
    cost = {"encoder_params_non_embedding": params, "tokens_encoded_at_largest": tokens,
            "gflop_at_largest": gflop, "achieved_gflops": gflop / rows[-1]["cosine_s"]}
    result = {"device": cosine.sentence_model.device.type, "sizes": sizes, "rows": rows,
              "largest_batch": sizes[-1], "share_at_largest": shares, "completions_per_s": headline, "target": TARGET,
              "encoder_cost": cost,
              "meets_target": headline >= TARGET,
              "targets": [{"target": f"regex+length+cosine completions/s at {sizes[-1]:,} (CPU)",
                           "value": headline, "threshold": TARGET, "met": headline >= TARGET}]}
    write_json(out_dir, "rewards", result)
    plot_lines(out_dir / "rewards_throughput.png", {k: (sizes, v) for k, v in series.items()},
               title="Reward throughput", xlabel="completions per call", ylabel="completions / s",
               logx=True, logy=True)
    share_rows = [{"component": k, "share of time": v} for k, v in shares.items()]
    write_markdown(out_dir, "rewards", "Reward throughput (regex + length + cosine)", [
        ("Headline", f"{headline:.0f} completions/s at {sizes[-1]:,} completions on {result['device']} "
                     f"(target >= {TARGET:.0f}: {'met' if result['meets_target'] else 'NOT met'}).\n"),
        ("Throughput", markdown_table(rows, ["completions", "completions_per_s", "composite_s",
                                             "regex_s", "length_s", "cosine_s", "combine_s"])),
        ("Share of time at the largest batch", markdown_table(share_rows)),
        ("Encoder cost", f"The cosine encoder has {params / 1e6:.1f} M non-embedding parameters and "
                         f"encodes {tokens} tokens per call at the largest batch: about {gflop:.0f} GFLOP, "
                         f"run at {cost['achieved_gflops']:.1f} GFLOP/s. The target needs the encoder to "
                         f"sustain about {gflop * TARGET / sizes[-1]:.0f} GFLOP/s.\n"),
        ("Plot", "![throughput](rewards_throughput.png)\n"),
    ])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    result = run(Path(args.out), quick=args.quick)
    print(f"{result['completions_per_s']:.0f} completions/s at {result['largest_batch']:,} on "
          f"{result['device']}; shares "
          f"{', '.join(f'{k} {v:.0%}' for k, v in result['share_at_largest'].items())}")


if __name__ == "__main__":
    main()
