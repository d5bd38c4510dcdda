"""Controller front ends started from a learning rate 10x too low and 10x too high.

Every method here is AdamW (weight decay 0.01) at ``lr = factor * 1e-3`` (1e-3 = AdamW's usual
default) for ``factor`` in 0.1 and 10, on the shared tasks of :mod:`benchmarks.tasks` (tiny
GPT-2 LM on Python docstrings, an MLP on scikit-learn's digits, noisy regression), 3 seeds:

* ``adamw``: uncontrolled, constant LR (the base every controller wraps);
* ``adamw_plateau``: ``torch.optim.lr_scheduler.ReduceLROnPlateau(factor=0.5, patience=T // 15)``
  stepped on every training loss (the standard reactive baseline);
* ``ao_trend``, ``ao_trend_variance``, ``ao_full``: :class:`AdaptiveOptimizer` with ``lr_rule``
  ``"trend"``, ``"trend+variance"``, and ``"trend+variance"`` plus ``betas_rule=("relative",
  "variance")`` and ``wd_rule="trend"``;
* ``scheduler``, ``scheduler_cosine``: :class:`AdaptiveScheduler` with the seed's defaults, and
  with the cosine overlay (``T0 = T // 4``);
* ``meta_plateau``, ``meta_advanced_plateau``, ``meta_rl``: :class:`OptimizerWrapper` around the
  meta-optimizers, fed the loss and gradient norm each step.

The table reports the held-out loss (mean over seeds) and its ratio to uncontrolled AdamW at the
same LR; the summary is the geometric mean of that ratio over tasks and seeds. PNG plots show the
training loss and the LR over steps (seed 0) at each LR factor.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptiverl.optim.adaptive_optimizer import AdaptiveOptimizer
from adaptiverl.optim.adaptive_scheduler import AdaptiveScheduler
from adaptiverl.optim.meta_optimizer import (
    AdvancedPlateauMetaOptimizer,
    MetaOptimizer,
    OptimizerWrapper,
    PlateauMetaOptimizer,
    RLMetaOptimizer,
)
from benchmarks.common import markdown_table, moving_average, plot_lines, write_json, write_markdown
from benchmarks.tasks import Driver, Method, get_tasks, train

NAME = "controllers"
BASE_LR = 1e-3
FACTORS = (0.1, 10.0)
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
QUICK_TASKS = ("digits_mlp",)
TASK_ORDER = ("digits_mlp", "noisy_regression", "tiny_gpt2_lm")
UNCONTROLLED = "adamw"

Build = Callable[[Iterable[nn.Parameter], float, int], Driver]


def _adamw(params: Iterable[nn.Parameter], lr: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)


def _uncontrolled(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    return Driver(_adamw(params, lr))


def _plateau(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    opt = _adamw(params, lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(5, total // 15))
    return Driver(opt, scheduler=plateau, scheduler_takes_loss=True)


def _adaptive_optimizer(**rules: Any) -> Build:
    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = AdaptiveOptimizer(_adamw(params, lr), **rules)

        def step(loss: torch.Tensor) -> None:
            opt.step_loss(loss)
            opt.step()

        return Driver(opt, step_fn=step)

    return build


def _scheduler(cosine: bool) -> Build:
    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = _adamw(params, lr)
        sched = AdaptiveScheduler(opt, use_cosine=cosine, T0=max(10, total // 4))
        return Driver(opt, on_loss=sched.step_loss)

    return build


def _meta(factory: Callable[[], MetaOptimizer]) -> Build:
    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        base = _adamw(params, lr)
        wrapped = OptimizerWrapper(base, factory())
        grads = [p for g in base.param_groups for p in g["params"]]

        def step(loss: torch.Tensor) -> None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads if p.grad is not None])
            wrapped.update_hyperparameters({"loss": loss, "grad_norm": norm})
            wrapped.step()

        return Driver(wrapped, step_fn=step)

    return build


METHODS: dict[str, Build] = {
    UNCONTROLLED: _uncontrolled,
    "adamw_plateau": _plateau,
    "ao_trend": _adaptive_optimizer(lr_rule="trend"),
    "ao_trend_variance": _adaptive_optimizer(lr_rule="trend+variance"),
    "ao_full": _adaptive_optimizer(lr_rule="trend+variance", betas_rule=("relative", "variance"), wd_rule="trend"),
    "scheduler": _scheduler(cosine=False),
    "scheduler_cosine": _scheduler(cosine=True),
    "meta_plateau": _meta(lambda: PlateauMetaOptimizer(patience=10)),
    "meta_advanced_plateau": _meta(lambda: AdvancedPlateauMetaOptimizer(patience=10, trend_window=10)),
    "meta_rl": _meta(lambda: RLMetaOptimizer(update_frequency=10, policy_lr=1e-2)),
}
FRONT_ENDS = [name for name in METHODS if name not in (UNCONTROLLED, "adamw_plateau")]



def _geomean(values: list[float]) -> float:
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        return math.inf
    return math.exp(statistics.fmean(math.log(v) for v in values))


def run(out_dir: Path, quick: bool = False, *, tasks: Iterable[str] | None = None) -> dict[str, Any]:
    """Run every method x LR factor x seed x task; write ``controllers.{json,md}`` and PNGs.

    The report is rewritten after each task, so an interrupted full run leaves the finished
    tasks on disk. ``quick``: the digits task only, its quick step budget, one seed.
    """
    out_dir = Path(out_dir)
    all_tasks = get_tasks(quick=quick)
    wanted = list(tasks) if tasks is not None else list(QUICK_TASKS if quick else TASK_ORDER)
    unknown = [name for name in wanted if name not in all_tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {sorted(all_tasks)}")
    seeds = QUICK_SEEDS if quick else SEEDS
    finals: dict[tuple[str, str, float], list[float]] = {}
    curves: dict[tuple[str, float], dict[str, dict[str, list[float]]]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread per run is fastest and leaves cores free
    try:
        data: dict[str, Any] = {}
        for done, task_name in enumerate(wanted, 1):
            task = all_tasks[task_name]
            for method_name, build in METHODS.items():
                method = Method(method_name, BASE_LR, build)
                for factor in FACTORS:
                    for seed in seeds:
                        result = train(task, method, lr=BASE_LR * factor, seed=seed)
                        finals.setdefault((task_name, method_name, factor), []).append(result.final_eval_loss)
                        if seed == seeds[0]:
                            curves.setdefault((task_name, factor), {})[method_name] = {
                                "losses": result.losses, "lrs": result.lrs}
            data = _tabulate(finals, {n: all_tasks[n] for n in wanted[:done]}, seeds)
            write_json(out_dir, NAME, {**data, "curves": {f"{t}@x{f:g}": c for (t, f), c in curves.items()}})
            _write_report(out_dir, data, curves)
    finally:
        torch.set_num_threads(threads)
    return data


def _tabulate(finals: dict[tuple[str, str, float], list[float]], tasks: dict[str, Any],
              seeds: tuple[int, ...]) -> dict[str, Any]:
    rows, ratios = [], {}
    for (task_name, method_name, factor), values in finals.items():
        reference = finals[(task_name, UNCONTROLLED, factor)]
        per_seed = [v / r for v, r in zip(values, reference, strict=True)]
        ratios.setdefault((method_name, factor), []).extend(per_seed)
        finite = [v for v in values if math.isfinite(v)]
        rows.append({"task": task_name, "method": method_name, "lr": BASE_LR * factor, "lr factor": factor,
                     "final loss": statistics.fmean(values) if len(finite) == len(values) else math.inf,
                     "std": statistics.stdev(values) if len(finite) == len(values) > 1 else 0.0,
                     "vs adamw": _geomean(per_seed), "diverged": len(values) - len(finite)})
    summary = [{"method": m, **{f"x{f:g}": _geomean(ratios[(m, f)]) for f in FACTORS},
                "worst factor": max(_geomean(ratios[(m, f)]) for f in FACTORS)} for m in METHODS]
    return {"base_lr": BASE_LR, "factors": list(FACTORS), "seeds": list(seeds),
            "tasks": {n: t.description for n, t in tasks.items()},
            "steps": {n: t.steps for n, t in tasks.items()},
            "rows": rows, "summary": summary, "targets": _targets(summary)}


def _targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {row["method"]: row for row in summary}
    out = []
    for factor in FACTORS:
        key = f"x{factor:g}"
        best = min(FRONT_ENDS, key=lambda m: by_name[m][key])
        plateau = by_name["adamw_plateau"][key]
        out.append({"target": f"best front end ({best}) vs uncontrolled AdamW at {factor:g}x LR",
                    "value": by_name[best][key], "threshold": 1.0, "met": "yes" if by_name[best][key] < 1.0 else "NO"})
        out.append({"target": f"best front end ({best}) vs ReduceLROnPlateau at {factor:g}x LR",
                    "value": by_name[best][key], "threshold": plateau,
                    "met": "yes" if by_name[best][key] < plateau else "NO"})
    return out


def _write_report(out_dir: Path, data: dict[str, Any], curves: dict) -> None:
    sections = [("Setup", "\n".join(
        [f"- AdamW (weight decay 0.01) at LR = factor x {data['base_lr']:g}, factors {data['factors']}, "
         f"seeds {data['seeds']}; final = held-out loss after the task's step budget",
         "- `vs adamw`: geometric mean over seeds (summary: over tasks and seeds) of final loss / "
         "uncontrolled AdamW's at the same LR; < 1 = the controller helped"]
        + [f"- `{t}` ({data['steps'][t]} steps): {d}" for t, d in data["tasks"].items()]) + "\n")]
    sections.append(("Targets", markdown_table(data["targets"], ["target", "value", "threshold", "met"])))
    columns = ["method", *[f"x{f:g}" for f in data["factors"]], "worst factor"]
    sections.append(("Summary: final loss / uncontrolled AdamW (lower is better)",
                     markdown_table(data["summary"], columns)))
    for task in data["tasks"]:
        rows = [r for r in data["rows"] if r["task"] == task]
        body = markdown_table(rows, ["method", "lr", "final loss", "std", "vs adamw", "diverged"])
        for factor in data["factors"]:
            series = curves.get((task, factor), {})
            stem = f"{NAME}_{task}_x{factor:g}"
            plot_lines(out_dir / f"{stem}_loss.png", {m: moving_average(c["losses"]) for m, c in series.items()},
                       title=f"{task}, LR {factor:g}x default: training loss (seed 0, 10-step mean)",
                       xlabel="step", ylabel="training loss", logy=True)
            plot_lines(out_dir / f"{stem}_lr.png", {m: c["lrs"] for m, c in series.items()},
                       title=f"{task}, LR {factor:g}x default: learning rate (seed 0)",
                       xlabel="step", ylabel="learning rate", logy=True)
            body += f"\n![{stem} loss]({stem}_loss.png) ![{stem} lr]({stem}_lr.png)\n"
        sections.append((f"{task}: held-out loss", body))
    write_markdown(out_dir, NAME, "Controller front ends from a mis-set learning rate", sections)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    out = Path(args[0]) if args else Path(__file__).resolve().parent / "reports" / NAME
    figures = run(out, quick="--quick" in sys.argv)
    print(markdown_table(figures["summary"]))
