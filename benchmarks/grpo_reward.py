"""GRPO reward over an LR grid: the quickstart's RL task, per optimizer, reward against step.

The task is ``configs/quickstart.json`` as a user runs it (TRL ``GRPOTrainer``, the composite reward
of regex + length + cosine similarity to a reference, a freshly built tiny GPT-2 from
:func:`adaptiverl.tiny.build_tiny_gpt2`), with ``STEPS`` shortened to the benchmark budget and
``LOGGING_STEPS = 1`` so TRL logs the mean batch reward (and entropy) of every step. Every row runs
at ``factor x`` the config's ``LRATE`` for each factor of ``LR_FACTORS`` (0.1x, 1x, 10x, 100x),
3 seeds; the model, data, trainer and reward are built with :mod:`adaptiverl.trainer.run`'s own
pieces (``load_model_and_tokenizer``, ``load_dataset_for``, ``build_optimizer``,
``build_trainer``), so the benchmark measures what ``train(config)`` runs.

Rows:

* ``adamw``: torch AdamW, constant lr (at 1x: the *AdamW-default* run);
* ``adamw_cosine``: the same with HF's cosine schedule;
* ``schedulefree_adamw``: ``schedulefree.AdamWScheduleFree`` at the grid lr;
* ``adamw_kl_adaptive``: AdamW with the KL-adaptive rule of robot RL (rsl_rl's PPO: lr x1.5 when
  the policy change per update is below half the target, /1.5 above twice it, lr kept within
  rsl_rl's ``[1e-5, 1e-2]``; target ``ANCHOR_KL``, rsl_rl's default ``desired_kl``), the change
  measured by the ``AdaptiveGRPOTrainer``'s probe (:mod:`adaptiverl.signals.policy`);
* ``online_adamw``: OnlineAdamW on the **default path**: a stock ``trl.GRPOTrainer`` with
  ``callbacks=[AdaptiveCallback()]`` (horizon known, signals from the logs);
* ``online_adamw_trainer``: OnlineAdamW through ``AdaptiveGRPOTrainer``, as ``train(config)``
  builds it (every step's loss, reward and RL signals).

Runs go to ``workers`` spawned processes with one torch thread each (default 2; 1 in quick mode):
tiny-model generation is fastest on one intra-op thread.

Figures per row and lr: final reward (mean of the last ``SMOOTH`` steps, mean over seeds); *steps
to* the AdamW-default run's final reward (the first step at which the row's smoothed mean curve
reaches it, as a ratio to the steps the AdamW-default curve itself needed; ``inf`` if never); and
**collapse**: a seed whose final reward is below its start (mean of its first ``SMOOTH`` steps), or
whose final entropy fell below ``ENTROPY_COLLAPSE`` of its start.
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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, plot_lines, write_json, write_markdown
from benchmarks.tasks import run_parallel

NAME = "grpo_reward"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.json"
STEPS, QUICK_STEPS = 150, 2
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
LR_FACTORS, QUICK_LR_FACTORS = (0.1, 1.0, 10.0, 100.0), (1.0,)
SMOOTH = 5
BASELINE = "adamw"
OURS_HEADLINE = "online_adamw"
#: the OnlineAdamW rows the targets are reported for: the stock trainer + callback, and train(config)'s
OURS = (OURS_HEADLINE, "online_adamw_trainer")
ANCHOR = "adamw_kl_adaptive"
#: rsl_rl's default ``desired_kl`` and lr bounds of its KL-adaptive schedule.
ANCHOR_KL, ANCHOR_LR_BOUNDS = 0.01, (1e-5, 1e-2)
#: final entropy below this fraction of the starting entropy counts as a collapse
ENTROPY_COLLAPSE = 0.2


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _torch_adamw(model: torch.nn.Module, c: Any) -> Any:
    return torch.optim.AdamW(_trainable(model), lr=c.LRATE, weight_decay=c.WEIGHT_DECAY)


def _schedulefree(model: torch.nn.Module, c: Any) -> Any:
    import schedulefree

    return schedulefree.AdamWScheduleFree(_trainable(model), lr=c.LRATE, weight_decay=c.WEIGHT_DECAY)


class KLAdaptiveLR(torch.optim.lr_scheduler.LambdaLR):
    """rsl_rl's KL-adaptive lr as a scheduler the ``AdaptiveCallback`` feeds (``observe(policy_kl=)``).

    The lr is ``base lr * m``; each measured policy change multiplies ``m`` by
    :func:`adaptiverl.controllers.policy_rules.kl_adaptive_factor`, the lr staying inside
    ``ANCHOR_LR_BOUNDS``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, target: float = ANCHOR_KL) -> None:
        self.target, self.multiplier = target, 1.0
        super().__init__(optimizer, lambda _: self.multiplier)

    def observe(self, **signals: Any) -> None:
        from adaptiverl.controllers.policy_rules import kl_adaptive_factor

        kl = signals.get("policy_kl")
        if kl is None:
            return
        base = self.base_lrs[0]
        lo, hi = ANCHOR_LR_BOUNDS
        lr = min(hi, max(lo, base * self.multiplier * kl_adaptive_factor(float(kl), self.target)))
        self.multiplier = lr / base


@dataclass
class Row:
    """How one row builds its run: config overrides, its optimizer (None: the config's ``OPTIM``
    through ``build_trainer``), an optional scheduler around it, and the trainer kind."""

    overrides: dict[str, Any] = field(default_factory=dict)
    optimizer: Callable[[torch.nn.Module, Any], Any] | None = None
    scheduler: Callable[[Any], Any] | None = None
    stock_trainer: bool = False  # trl.GRPOTrainer + callbacks=[AdaptiveCallback()]


METHODS: dict[str, Row] = {
    "adamw": Row(optimizer=_torch_adamw),
    "adamw_cosine": Row({"LR_SCHEDULER": "cosine"}, _torch_adamw),
    "schedulefree_adamw": Row(optimizer=_schedulefree),
    ANCHOR: Row(optimizer=_torch_adamw, scheduler=KLAdaptiveLR),
    "online_adamw": Row({"OPTIM": "adamw"}, stock_trainer=True),
    "online_adamw_trainer": Row({"OPTIM": "adamw"}),
}
#: rows whose optimizer the AdaptiveCallback feeds
FED = ("online_adamw", "online_adamw_trainer", ANCHOR)


def _config(model_dir: Path, out_dir: Path, steps: int, seed: int, factor: float, overrides: dict[str, Any]):
    from adaptiverl.trainer.config import parse_config

    raw = json.loads(CONFIG.read_text())
    overrides = {**overrides, "LRATE": float(raw["LRATE"]) * factor}
    raw.update(MODEL=str(model_dir), OUTPUT_DIR=str(out_dir), STEPS=steps, SEED=seed,
               LOGGING_STEPS=1, SAVE_STEPS=0, REPORT_TO=[], PLOT=False, **overrides)
    return parse_config(raw, base_dir=CONFIG.parent)


def _quiet() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _stock_trainer(c: Any, model: Any, tokenizer: Any, dataset: Any, optimizer: Any) -> Any:
    """A plain ``trl.GRPOTrainer`` with the config's arguments and ``callbacks=[AdaptiveCallback()]``."""
    from trl import GRPOTrainer

    from adaptiverl.rewards import build_rewards
    from adaptiverl.trainer.callback import AdaptiveCallback
    from adaptiverl.trainer.run import training_arguments, weight_decay_of

    args = training_arguments(c)
    args.weight_decay = weight_decay_of(c)
    return GRPOTrainer(model=model, reward_funcs=[build_rewards(c.REWARDS)], args=args, train_dataset=dataset,
                       processing_class=tokenizer, optimizers=(optimizer, None),
                       callbacks=[AdaptiveCallback(print_console=False, history_file=None)])


def run_one(job: tuple[str, float, Path, Path, int, int]) -> dict[str, Any]:
    """One GRPO run ``(method, lr factor, model_dir, work_dir, steps, seed)``: per-step records.

    The job runs on one torch intra-op thread, as in :func:`run`'s workers (the caller's count is
    restored afterwards): the thread count changes the float reduction order, so a run far enough
    from the start samples other completions (AdamW KL-adaptive at 100x, seed 2, on 2 threads left
    the report's rewards at step 81). With ``model_dir`` from ``build_tiny_gpt2``, a job run alone
    reads the same rewards as inside :func:`run`. Errors are returned (``"error"``), not raised, so
    one broken optimizer cannot stop the others.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_one(job)
    finally:
        torch.set_num_threads(threads)


def _run_one(job: tuple[str, float, Path, Path, int, int]) -> dict[str, Any]:
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from adaptiverl.trainer.callback import AdaptiveCallback
    from adaptiverl.trainer.run import (
        build_optimizer,
        build_trainer,
        load_dataset_for,
        load_model_and_tokenizer,
    )

    method, factor, model_dir, work_dir, steps, seed = job
    _quiet()
    row = METHODS[method]
    try:
        c = _config(model_dir, work_dir / f"{method}-{factor:g}-{seed}", steps, seed, factor, row.overrides)
        set_seed(c.SEED)
        model, tokenizer = load_model_and_tokenizer(c)
        dataset = load_dataset_for(c, tokenizer)
        optimizer = build_optimizer(c, model) if row.optimizer is None else row.optimizer(model, c)
        lr = float(optimizer.param_groups[0]["lr"])
        if row.stock_trainer:
            trainer = _stock_trainer(c, model, tokenizer, dataset, optimizer)
        elif row.scheduler is not None:
            trainer = build_trainer(c, model, tokenizer, dataset, optimizer)
            trainer.lr_scheduler = row.scheduler(optimizer)  # kept: create_scheduler builds none then
        else:
            trainer = build_trainer(c, model, tokenizer, dataset, optimizer)
        for cb in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(cb)
        if method in FED and not row.stock_trainer:  # no console, no history file
            trainer.add_callback(AdaptiveCallback(print_console=False, history_file=None))
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the stock trainer's "from the logs" notice
            trainer.train()
        seconds = time.perf_counter() - start
    except Exception as err:  # reported as the method's row, not fatal
        return {"method": method, "factor": factor, "seed": seed, "error": f"{type(err).__name__}: {err}"}
    logged = [r for r in trainer.state.log_history if "reward" in r]
    callback = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdaptiveCallback)), None)
    history = callback.history if callback is not None else []
    # the LR the optimizer applied: the controller's (AdaptiveCallback's history) or the schedule's
    lrs = [h.get("lr", h.get("scheduler_lr", math.nan)) for h in history] if history else \
        [r.get("learning_rate", math.nan) for r in logged]
    kls = [h.get("policy_kl", math.nan) for h in history]
    return {"method": method, "factor": factor, "seed": seed, "lr": lr, "rewards": [r["reward"] for r in logged],
            "entropy": [r.get("entropy", math.nan) for r in logged], "lrs": lrs, "policy_kl": kls,
            "sec_per_step": seconds / max(1, trainer.state.global_step)}


def collapsed(run: dict[str, Any]) -> bool:
    """Final reward below the start, or the entropy fallen below ``ENTROPY_COLLAPSE`` of its start."""
    rewards, entropy = run["rewards"], [e for e in run["entropy"] if math.isfinite(e)]
    if statistics.fmean(rewards[-SMOOTH:]) < statistics.fmean(rewards[:SMOOTH]):
        return True
    return bool(entropy) and statistics.fmean(entropy[-SMOOTH:]) < ENTROPY_COLLAPSE * statistics.fmean(entropy[:SMOOTH])


def _per_seed_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per method, the mean over seeds of (steps its smoothed curve needs to reach the AdamW-default
    run's final smoothed reward of the same seed) / (steps AdamW-default itself needed); a seed that
    never reaches it counts as the full budget + 1."""
    base = {r["seed"]: _moving_mean(r["rewards"], SMOOTH) for r in runs.get(_key(BASELINE, 1.0), [])}
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


def _key(method: str, factor: float) -> str:
    return f"{method}@{factor:g}x"


def run(out_dir: Path, quick: bool = False, *, methods: list[str] | None = None,
        workers: int | None = None, factors: tuple[float, ...] | None = None,
        seeds: tuple[int, ...] | None = None, steps: int | None = None,
        pretrain_steps: int = 0, name: str = NAME) -> dict[str, Any]:
    """Run every row at every lr factor and seed; write ``{name}.{json,md}`` and one PNG per factor.

    ``pretrain_steps > 0``: the tiny GPT-2 is first pre-trained that many steps on
    :func:`adaptiverl.tiny.python_corpus` (:func:`adaptiverl.tiny.pretrain`), so every run starts
    from one pre-trained policy instead of a fresh one.
    """
    from adaptiverl.tiny import build_tiny_gpt2, pretrain

    out_dir = Path(out_dir)
    steps = steps or (QUICK_STEPS if quick else STEPS)
    seeds = seeds or (QUICK_SEEDS if quick else SEEDS)
    factors = tuple(sorted(set(factors or (QUICK_LR_FACTORS if quick else LR_FACTORS)) | {1.0}))
    if workers is None:  # spawning workers costs more than the quick runs themselves
        workers = 1 if quick else min(2, os.cpu_count() or 1)
    names = list(METHODS) if methods is None else [BASELINE, *(m for m in methods if m != BASELINE)]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown GRPO method(s) {unknown}; valid: {list(METHODS)}")
    _quiet()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        model_dir = build_tiny_gpt2(Path(tmp) / "tiny-gpt2")
        pretrain_loss = pretrain(model_dir, pretrain_steps) if pretrain_steps > 0 else None
        jobs = [(n, f, model_dir, Path(tmp), steps, s) for f in factors for n in names for s in seeds]
        records = run_parallel(run_one, jobs, workers, label=name)
    errors = {_key(r["method"], r["factor"]): r["error"] for r in records if "error" in r}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if "error" not in r:
            runs.setdefault(_key(r["method"], r["factor"]), []).append(r)

    curves = {}
    for key, rs in runs.items():
        length = min(len(r["rewards"]) for r in rs)
        curves[key] = _moving_mean([statistics.fmean(r["rewards"][i] for r in rs) for i in range(length)], SMOOTH)
    base_key = _key(BASELINE, 1.0)
    target_reward = curves[base_key][-1] if curves.get(base_key) else math.nan

    def first_reach(curve: list[float]) -> int | None:
        return next((i + 1 for i, v in enumerate(curve) if v >= target_reward), None)

    baseline_steps = first_reach(curves[base_key]) if curves.get(base_key) else None
    per_seed = _per_seed_ratios(runs)
    rows = []
    for f in factors:
        for method in names:
            rs = runs.get(_key(method, f))
            if not rs:
                continue
            reach = first_reach(curves[_key(method, f)])
            finals = [statistics.fmean(r["rewards"][-SMOOTH:]) for r in rs]
            applied = [lr for r in rs for lr in r["lrs"] if math.isfinite(lr)]
            kls = [k for r in rs for k in r["policy_kl"] if math.isfinite(k)]
            rows.append({
                "lr factor": f, "method": method, "lr": rs[0]["lr"],
                "lr min": min(applied, default=math.nan), "lr max": max(applied, default=math.nan),
                "final reward": statistics.fmean(finals),
                "final reward sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "steps to AdamW-default final": reach if reach is not None else "never",
                "ratio": (reach / baseline_steps if reach is not None and baseline_steps else math.inf),
                "ratio, mean over seeds": per_seed.get(_key(method, f), math.nan),
                "collapsed seeds": sum(collapsed(r) for r in rs),
                "mean policy KL": statistics.fmean(kls) if kls else math.nan,
                "s/step": statistics.fmean(r["sec_per_step"] for r in rs),
            })
    by = {(r["method"], r["lr factor"]): r for r in rows}
    targets = _targets(by, factors)
    data = {"quick": quick, "steps": steps, "seeds": list(seeds), "lr_factors": list(factors),
            "pretrain_steps": pretrain_steps, "pretrain_loss": pretrain_loss,
            "config": str(CONFIG.name), "target_reward": target_reward, "baseline_steps": baseline_steps,
            "table": rows, "targets": targets, "errors": errors, "reward_curves": curves,
            "runs": {k: [{"seed": r["seed"], "rewards": r["rewards"], "entropy": r["entropy"],
                          "lrs": r["lrs"], "policy_kl": r["policy_kl"]} for r in rs] for k, rs in runs.items()}}
    write_json(out_dir, name, data)
    policy = f", policy pre-trained {pretrain_steps} steps" if pretrain_steps > 0 else ""
    pictures = []
    for f in factors:
        series = {k.split("@")[0]: v for k, v in curves.items() if k.endswith(f"@{f:g}x")}
        if series:
            path = out_dir / f"{name}_x{f:g}.png"
            plot_lines(path, series, title=f"GRPO quickstart{policy} at {f:g}x the lr: reward vs step "
                       f"(mean of {len(seeds)} seeds, {SMOOTH}-step moving mean)", xlabel="step", ylabel="reward")
            pictures.append(f"![reward at {f:g}x]({path.name})")
    sections = [
        ("Setup", (f"- policy: the tiny GPT-2 pre-trained for {pretrain_steps} steps on the standard library's "
                   f"docstrings (`adaptiverl.tiny.pretrain`, final loss {pretrain_loss:.3f}), then the runs\n"
                   if pretrain_steps > 0 else "") +
                  f"- `{CONFIG.name}` with STEPS={steps}, seeds {list(seeds)}, lr factors {list(factors)} of "
                  f"its LRATE; AdamW-default (constant, 1x) final reward (smoothed) = {target_reward:.4g}, which "
                  f"its own curve first reaches at step {baseline_steps}; `ratio` = a row's steps to that reward "
                  f"/ {baseline_steps}; `collapsed seeds`: final reward below the start or entropy below "
                  f"{ENTROPY_COLLAPSE:g}x its start; `lr min`/`lr max`: the lr the optimizer applied\n"),
        ("Targets", markdown_table(targets, ["target", "value", "threshold", "met"])),
        ("Reward", markdown_table(rows) + "\n" + "\n".join(pictures) + "\n"),
    ]
    if errors:
        sections.append(("Failed", "\n".join(f"- `{k}`: {v}" for k, v in errors.items()) + "\n"))
    write_markdown(out_dir, name, f"GRPO reward over an LR grid (quickstart task{policy})", sections)
    return data


def _targets(by: dict[tuple[str, float], dict[str, Any]], factors: tuple[float, ...]) -> list[dict[str, Any]]:
    """The issue's GRPO targets, for both OnlineAdamW rows (stock trainer + callback, and the
    ``AdaptiveGRPOTrainer`` that ``train(config)`` builds), as far as the grid ran."""
    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    out = []
    for row in OURS:
        for f in factors:
            ours, adamw = by.get((row, f)), by.get((BASELINE, f))
            if ours and adamw:
                out.append({"target": f"{row}: final reward at {f:g}x >= AdamW constant's",
                            "value": ours["final reward"], "threshold": adamw["final reward"],
                            "met": verdict(ours["final reward"] >= adamw["final reward"])})
        ours = by.get((row, 1.0))
        if ours:
            value = ours["ratio, mean over seeds"]
            out.append({"target": f"{row}: steps to AdamW-default's final reward / AdamW's own (1x, mean over seeds)",
                        "value": value, "threshold": 0.75, "met": verdict(value <= 0.75)})
        high = max(factors)
        ours_high, adamw_high = by.get((row, high)), by.get((BASELINE, high))
        if ours_high and adamw_high and adamw_high["collapsed seeds"]:
            out.append({"target": f"{row}: no collapse at {high:g}x where AdamW collapses "
                                  f"({adamw_high['collapsed seeds']} seeds)",
                        "value": ours_high["collapsed seeds"], "threshold": 0,
                        "met": verdict(ours_high["collapsed seeds"] == 0)})
        anchor = by.get((ANCHOR, 1.0))
        if ours and anchor:
            out.append({"target": f"{row}: final reward at 1x ahead of the KL-adaptive anchor",
                        "value": ours["final reward"], "threshold": anchor["final reward"],
                        "met": verdict(ours["final reward"] > anchor["final reward"])})
    return out
