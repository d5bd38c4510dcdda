"""GRPO reward: the quickstart's RL task, per optimizer, reward against step.

The task is ``configs/quickstart.json`` as a user runs it (TRL ``GRPOTrainer``, the composite reward
of regex + length + cosine similarity to a reference, a freshly built tiny GPT-2 from
:func:`adaptiverl.tiny.build_tiny_gpt2`), with ``STEPS`` shortened to the benchmark budget and
``LOGGING_STEPS = 1`` so TRL logs the mean batch reward of every step. Each optimizer runs for the
same number of steps with 3 seeds; the model, data, trainer and reward are built with
:mod:`adaptiverl.trainer.run`'s own pieces (``load_model_and_tokenizer``, ``load_dataset_for``,
``build_optimizer``, ``build_trainer``), so the benchmark measures what ``train(config)`` runs.

Optimizers: ``adamw`` (torch AdamW at the config's LR, constant schedule: the *AdamW-default* run),
``adamw_cosine`` (same with HF's cosine schedule), ``schedulefree_adamw`` (its package default),
``online_adamw`` through the config's ``OPTIM`` (fed by
:class:`adaptiverl.trainer.callback.AdaptiveCallback` as in ``train(config)``, which also tells
it the horizon ``max_steps``), and both AdamW and OnlineAdamW at 10x the config's LR
(``adamw_10x``, ``online_adamw_10x``: does the controller keep a too-large LR from collapsing?).

Runs go to ``workers`` spawned processes with one torch thread each (default 2; 1 in quick mode):
tiny-model generation is fastest on one intra-op thread.

Figures: reward against step (mean over seeds, 5-step moving mean); final reward (mean of the last
5 steps); and *steps to reach* the AdamW-default run's final reward: the first step at which a
method's smoothed mean curve reaches it, as a ratio to the steps the AdamW-default curve itself
needed to first reach it (``inf`` if never; AdamW is 1.00 by construction).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, plot_lines, write_json, write_markdown
from benchmarks.tasks import run_parallel

NAME = "grpo_reward"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.json"
STEPS, QUICK_STEPS = 150, 2
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
SMOOTH = 5
BASELINE = "adamw"
OURS_HEADLINE = "online_adamw"
OURS = ("online_adamw", "online_adamw_10x")  # fed by AdaptiveCallback
HIGH_LR = 10.0  # the "10x the LR" rows: no collapse wanted


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _torch_adamw(model: torch.nn.Module, c: Any) -> Any:
    return torch.optim.AdamW(_trainable(model), lr=c.LRATE, weight_decay=c.WEIGHT_DECAY)


def _schedulefree(model: torch.nn.Module, c: Any) -> Any:
    import schedulefree

    return schedulefree.AdamWScheduleFree(_trainable(model), weight_decay=c.WEIGHT_DECAY)


def _prodigy(model: torch.nn.Module, c: Any) -> Any:
    from prodigyopt import Prodigy

    return Prodigy(_trainable(model), lr=1.0, weight_decay=c.WEIGHT_DECAY)


def _adaptive_optimizer(model: torch.nn.Module, c: Any) -> Any:
    """torch AdamW wrapped by AdaptiveOptimizer with its default rules.

    Built here because the config cannot name it: ``OPTIM: "AdamW"`` resolves (case-insensitively)
    to OnlineAdamW.
    """
    from adaptiverl.optim import AdaptiveOptimizer

    return AdaptiveOptimizer(_torch_adamw(model, c))


# name -> (config overrides, optimizer factory or None to let build_optimizer(config) build it);
# an override "LRATE_FACTOR" multiplies the config's LRATE
METHODS: dict[str, tuple[dict[str, Any], Callable[[torch.nn.Module, Any], Any] | None]] = {
    "adamw": ({}, _torch_adamw),
    "adamw_cosine": ({"LR_SCHEDULER": "cosine"}, _torch_adamw),
    "schedulefree_adamw": ({}, _schedulefree),
    "online_adamw": ({"OPTIM": "adamw"}, None),
    "adamw_10x": ({"LRATE_FACTOR": HIGH_LR}, _torch_adamw),
    "online_adamw_10x": ({"OPTIM": "adamw", "LRATE_FACTOR": HIGH_LR}, None),
}


def _config(model_dir: Path, out_dir: Path, steps: int, seed: int, overrides: dict[str, Any]):
    from adaptiverl.trainer.config import parse_config

    raw = json.loads(CONFIG.read_text())
    overrides = dict(overrides)
    factor = overrides.pop("LRATE_FACTOR", None)
    if factor is not None:
        overrides["LRATE"] = float(raw["LRATE"]) * factor
    raw.update(MODEL=str(model_dir), OUTPUT_DIR=str(out_dir), STEPS=steps, SEED=seed,
               LOGGING_STEPS=1, SAVE_STEPS=0, REPORT_TO=[], PLOT=False, **overrides)
    return parse_config(raw, base_dir=CONFIG.parent)


def _quiet() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run_one(job: tuple[str, Path, Path, int, int]) -> dict[str, Any]:
    """One GRPO run ``(method, model_dir, work_dir, steps, seed)``: per-step rewards and time.

    Errors are returned (``"error"``), not raised, so one broken optimizer cannot stop the others.
    """
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from adaptiverl.trainer.callback import AdaptiveCallback
    from adaptiverl.trainer.run import (
        build_optimizer,
        build_trainer,
        load_dataset_for,
        load_model_and_tokenizer,
    )

    method, model_dir, work_dir, steps, seed = job
    _quiet()
    overrides, factory = METHODS[method]
    try:
        c = _config(model_dir, work_dir / f"{method}-{seed}", steps, seed, overrides)
        set_seed(c.SEED)
        model, tokenizer = load_model_and_tokenizer(c)
        dataset = load_dataset_for(c, tokenizer)
        optimizer = build_optimizer(c, model) if factory is None else factory(model, c)
        lr = float(optimizer.param_groups[0]["lr"])
        trainer = build_trainer(c, model, tokenizer, dataset, optimizer)
        for cb in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(cb)
        if method in OURS:  # replaces the callback the Adaptive*Trainer holds: no console, no history
            trainer.add_callback(AdaptiveCallback(print_console=False, history_file=None))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
        seconds = time.perf_counter() - start
    except Exception as err:  # reported as the method's row, not fatal
        return {"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"}
    logged = [row for row in trainer.state.log_history if "reward" in row]
    # the LR the optimizer applied: the controller's (logged by AdaptiveCallback) or the schedule's
    lrs = [row.get("adaptive/lr", row.get("learning_rate", math.nan)) for row in logged]
    return {"method": method, "seed": seed, "lr": lr, "rewards": [row["reward"] for row in logged],
            "lrs": lrs, "sec_per_step": seconds / max(1, trainer.state.global_step)}


def _per_seed_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per method, the mean over seeds of (steps its smoothed curve needs to reach the AdamW-default
    run's final smoothed reward of the same seed) / (steps AdamW-default itself needed); a seed that
    never reaches it counts as the full budget + 1."""
    base = {r["seed"]: _moving_mean(r["rewards"], SMOOTH) for r in runs.get(BASELINE, [])}
    out = {}
    for name, rs in runs.items():
        ratios = []
        for r in rs:
            ref = base.get(r["seed"])
            if not ref:
                continue
            target = ref[-1]
            own = next((i + 1 for i, v in enumerate(ref) if v >= target), len(ref))
            curve = _moving_mean(r["rewards"], SMOOTH)
            reach = next((i + 1 for i, v in enumerate(curve) if v >= target), len(curve) + 1)
            ratios.append(reach / own)
        if ratios:
            out[name] = statistics.fmean(ratios)
    return out


def _moving_mean(values: list[float], width: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1):i + 1]) for i in range(len(values))]


def run(out_dir: Path, quick: bool = False, *, methods: list[str] | None = None,
        workers: int | None = None) -> dict[str, Any]:
    """Run every method for the step budget and seeds; write ``grpo_reward.{json,md,png}``."""
    from adaptiverl.tiny import build_tiny_gpt2

    out_dir = Path(out_dir)
    steps = QUICK_STEPS if quick else STEPS
    seeds = QUICK_SEEDS if quick else SEEDS
    if workers is None:  # spawning workers costs more than the quick runs themselves
        workers = 1 if quick else min(2, os.cpu_count() or 1)
    names = list(METHODS) if methods is None else [BASELINE, *(m for m in methods if m != BASELINE)]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown GRPO method(s) {unknown}; valid: {list(METHODS)}")
    _quiet()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        model_dir = build_tiny_gpt2(Path(tmp) / "tiny-gpt2")
        records = run_parallel(run_one, [(n, model_dir, Path(tmp), steps, s) for n in names
                                         for s in seeds], workers, label=NAME)
    errors = {r["method"]: r["error"] for r in records if "error" in r}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["method"] not in errors:
            runs.setdefault(r["method"], []).append(r)

    curves = {}
    for name, rs in runs.items():
        length = min(len(r["rewards"]) for r in rs)
        mean = [statistics.fmean(r["rewards"][i] for r in rs) for i in range(length)]
        curves[name] = _moving_mean(mean, SMOOTH)
    target_reward = curves[BASELINE][-1] if curves.get(BASELINE) else math.nan

    def first_reach(curve: list[float]) -> int | None:
        return next((i + 1 for i, v in enumerate(curve) if v >= target_reward), None)

    baseline_steps = first_reach(curves[BASELINE]) if curves.get(BASELINE) else None
    rows = []
    for name, curve in curves.items():
        reach = first_reach(curve)
        finals = [statistics.fmean(r["rewards"][-SMOOTH:]) for r in runs[name]]
        applied = [lr for r in runs[name] for lr in r["lrs"] if math.isfinite(lr)]
        rows.append({
            "method": name, "lr": runs[name][0]["lr"],
            "lr min": min(applied, default=math.nan), "lr max": max(applied, default=math.nan),
            "final reward": statistics.fmean(finals),
            "final reward sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "steps to AdamW-default final": reach if reach is not None else "never",
            "ratio": (reach / baseline_steps if reach is not None and baseline_steps else math.inf),
            "s/step": statistics.fmean(r["sec_per_step"] for r in runs[name]),
        })
    per_seed = _per_seed_ratios(runs)
    for row in rows:
        row["ratio, mean over seeds"] = per_seed.get(row["method"], math.nan)
    by_name = {r["method"]: r for r in rows}
    ours = by_name.get(OURS_HEADLINE)
    targets = [{
        "target": "OnlineAdamW: steps to the AdamW-default final reward / AdamW's own, mean over seeds",
        "value": "n/a" if ours is None else ours["ratio, mean over seeds"], "threshold": 0.75,
        "met": "n/a" if ours is None else ("yes" if ours["ratio, mean over seeds"] <= 0.75 else "NO")}]
    high, base = by_name.get("online_adamw_10x"), by_name.get(BASELINE)
    if high is not None and base is not None:
        targets.append({
            "target": f"OnlineAdamW at {HIGH_LR:g}x the LR: final reward >= AdamW-default's (no collapse)",
            "value": high["final reward"], "threshold": base["final reward"],
            "met": "yes" if high["final reward"] >= base["final reward"] else "NO"})
    data = {"quick": quick, "steps": steps, "seeds": list(seeds), "config": str(CONFIG.name),
            "target_reward": target_reward, "baseline_steps": baseline_steps, "table": rows, "targets": targets, "errors": errors,
            "reward_curves": curves,
            "runs": {n: [{"seed": r["seed"], "rewards": r["rewards"]} for r in rs] for n, rs in runs.items()}}
    write_json(out_dir, NAME, data)
    if curves:
        plot_lines(out_dir / f"{NAME}.png", curves, title=f"GRPO quickstart: reward vs step "
                   f"(mean of {len(seeds)} seeds, {SMOOTH}-step moving mean)", xlabel="step",
                   ylabel="reward")
    sections = [
        ("Setup", f"- `{CONFIG.name}` with STEPS={steps}, seeds {list(seeds)}; AdamW-default final "
                  f"reward (smoothed) = {target_reward:.4g}, which its own curve first reaches at step "
                  f"{baseline_steps}; `ratio` = a method's steps to that reward / {baseline_steps}; "
                  "`lr min`/`lr max`: the LR the optimizer applied (controller or schedule)\n"),
        ("Targets", markdown_table(targets, ["target", "value", "threshold", "met"])),
        ("Reward", markdown_table(rows) + f"\n![reward]({NAME}.png)\n"),
    ]
    if errors:
        sections.append(("Failed", "\n".join(f"- `{k}`: {v}" for k, v in errors.items()) + "\n"))
    write_markdown(out_dir, NAME, "GRPO reward (quickstart task)", sections)
    return data
