"""EnhancedSGD ablation: each feature alone on top of SGD with momentum, and all of them together.

For every task of :mod:`benchmarks.tasks` the learning rate is first tuned for plain
``torch.optim.SGD(momentum=0.9, foreach=True)`` (constant LR, best mean held-out loss over the seeds
on ``LR_GRID``). At that LR every configuration of :data:`CONFIGS` is trained with 3 seeds:

* ``torch_sgd``: the reference, ``torch.optim.SGD(momentum=0.9, foreach=True)``;
* ``all_off``: ``EnhancedSGD`` with every feature off (must match ``torch_sgd``: the anchor);
* one row per feature switched on alone, with the settings shown in the table;
* ``all_on``: every feature together.

Columns per task: mean held-out loss over seeds, its ratio to ``torch_sgd`` (< 1 = better) and the
time of a whole training step (forward, backward, optimizer) as a ratio to ``torch_sgd``. The
``opt step`` column times ``optimizer.step()`` alone (median of blocks of 10 steps, fixed gradients on
the tiny GPT-2's parameters) as a ratio to ``torch.optim.SGD(foreach=True)``. A feature
"helps" on a task when its mean loss is at least ``HELP_MARGIN`` (1%) below ``torch_sgd``'s **and**
it beats ``torch_sgd`` on every seed. Timings on a shared machine are noisy; re-run on a quiet one.

``python -m benchmarks.enhanced_sgd_ablation [--quick] [--out DIR]``
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    markdown_table,
    median_time,
    moving_average,
    plot_lines,
    write_json,
    write_markdown,
)
from benchmarks.tasks import Driver, Method, get_tasks, run_parallel, train

NAME = "enhanced_sgd_ablation"
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
LR_GRID = (0.01, 0.03, 0.1, 0.3)
QUICK_LR = 0.05
HELP_MARGIN = 0.01

OFF: dict[str, Any] = {"q_learning": False}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "torch_sgd": None,
    "all_off": {},
    "q_learning (lr only)": {"q_learning": True, "adaptive_momentum": False},
    "q_learning + adaptive_momentum": {"q_learning": True, "adaptive_momentum": True},
    "entropy_adjustment": {"entropy_adjustment": True},
    "gradient_buffer_size=4": {"gradient_buffer_size": 4},
    "lookahead k=5 a=0.5": {"lookahead_k": 5, "lookahead_alpha": 0.5},
    "gradient_clipping": {"gradient_clipping": True},
    "loss_correction_factor=0.5": {"loss_correction_factor": 0.5},
    "noise_scale=1e-4": {"noise_scale": 1e-4},
    "gradient_centering": {"gradient_centering": True},
    "bayesian_init": {"bayesian_init": True},
}
ALL_ON = {k: v for name, cfg in CONFIGS.items() if cfg for k, v in cfg.items()}
CONFIGS["all_on"] = ALL_ON


def method(config: str) -> Method:
    """The :class:`~benchmarks.tasks.Method` of one ablation row (constant LR, momentum 0.9)."""
    kwargs = CONFIGS[config]
    if kwargs is None:
        def build_torch(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
            return Driver(torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True))

        return Method(config, QUICK_LR, build_torch, family="torch")

    from adaptiverl.optim import EnhancedSGD

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        opt = EnhancedSGD(params, lr=lr, momentum=0.9, **{**OFF, **kwargs})
        return Driver(opt, step_fn=lambda loss: opt.step(closure=lambda: loss))

    return Method(config, QUICK_LR, build, family="ours")


def optimizer_step_times(quick: bool = False) -> tuple[dict[str, float], int]:
    """(seconds per ``optimizer.step()`` of every config, parameter count) on the tiny GPT-2, fixed gradients."""
    model = get_tasks(quick)["tiny_gpt2_lm"].build_model(0)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    loss = torch.tensor(3.0)
    block = 10
    times = {}
    for config in CONFIGS:
        driver = method(config).build(params, 1e-3, 1000)
        times[config] = median_time(lambda driver=driver: [driver.step(loss) for _ in range(block)],
                                    repeats=3 if quick else 7, warmup=1) / block
    return times, sum(p.numel() for p in params)


def _run_one(job: tuple[str, str, float, int, bool]) -> dict[str, Any]:
    task_name, config, lr, seed, quick = job
    result = train(get_tasks(quick)[task_name], method(config), lr, seed)
    return {"task": task_name, "config": config, "lr": lr, "seed": seed,
            "final": result.final_eval_loss, "diverged": result.diverged,
            "sec_per_step": result.sec_per_step, "losses": result.losses}


def _mean(values: list[float]) -> float:
    return math.inf if any(not math.isfinite(v) for v in values) else statistics.fmean(values)


def run(out_dir: Path, quick: bool = False, *, workers: int | None = None) -> dict[str, Any]:
    """Tune SGD's LR per task, run the ablation grid, write JSON / markdown / PNGs; return the data."""
    seeds = QUICK_SEEDS if quick else SEEDS
    tasks = list(get_tasks(quick))
    if workers is None:
        workers = 1 if quick else 2

    if quick:
        tuned = dict.fromkeys(tasks, QUICK_LR)
        tuning: list[dict[str, Any]] = []
    else:
        tuning = run_parallel(_run_one, [(t, "torch_sgd", lr, s, quick) for t in tasks for lr in LR_GRID
                            for s in seeds], workers)
        tuned = {t: min(LR_GRID, key=lambda lr, t=t: _mean(
            [r["final"] for r in tuning if r["task"] == t and r["lr"] == lr])) for t in tasks}
    # reuse the tuning runs of torch_sgd at the tuned LR
    done = [r for r in tuning if r["lr"] == tuned[r["task"]]]
    jobs = [(t, c, tuned[t], s, quick) for t in tasks for c in CONFIGS for s in seeds
            if quick or c != "torch_sgd"]
    records = done + run_parallel(_run_one, jobs, workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # time the step on one thread, as the runs used
    try:
        step_times, n_params = optimizer_step_times(quick)
    finally:
        torch.set_num_threads(threads)

    def cell(task: str, config: str) -> list[dict[str, Any]]:
        return sorted((r for r in records if r["task"] == task and r["config"] == config),
                      key=lambda r: r["seed"])

    rows, summary = [], {}
    for config in CONFIGS:
        row: dict[str, Any] = {"config": config}
        helped = []
        for task in tasks:
            ref, runs = cell(task, "torch_sgd"), cell(task, config)
            ref_loss = _mean([r["final"] for r in ref])
            loss = _mean([r["final"] for r in runs])
            ref_time = statistics.median(r["sec_per_step"] for r in ref)
            time_ratio = statistics.median(r["sec_per_step"] for r in runs) / ref_time
            ratio = loss / ref_loss if math.isfinite(loss) else math.inf
            every_seed = all(r["final"] < q["final"] for r, q in zip(runs, ref, strict=True))
            if config != "torch_sgd" and ratio <= 1.0 - HELP_MARGIN and every_seed:
                helped.append(task)
            row[f"{task} loss"] = loss if math.isfinite(loss) else "diverged"
            row[f"{task} vs SGD"] = ratio if math.isfinite(ratio) else "diverged"
            row[f"{task} time"] = time_ratio
            summary.setdefault(config, {})[task] = {"loss": loss, "loss_ratio": ratio,
                                                    "time_ratio": time_ratio,
                                                    "seeds": [r["final"] for r in runs]}
        row["opt step"] = step_times[config] / step_times["torch_sgd"]
        summary[config]["opt_step_ratio"] = row["opt step"]
        summary[config]["opt_step_sec"] = step_times[config]
        row["helps on"] = ", ".join(helped) if helped else ("-" if config == "torch_sgd" else "never")
        summary[config]["helps_on"] = helped
        rows.append(row)

    anchor_gap = max(abs(summary["all_off"][t]["loss"] - summary["torch_sgd"][t]["loss"]) for t in tasks)
    never = [c for c in CONFIGS if c not in ("torch_sgd", "all_off") and not summary[c]["helps_on"]]
    plots = []
    for task in tasks:
        curves = {c: moving_average(cell(task, c)[0]["losses"]) for c in CONFIGS if c != "all_off"}
        plots.append(plot_lines(out_dir / f"{NAME}_{task}.png", curves, title=f"{task}: training loss (seed 0, "
                                f"lr {tuned[task]:g}, 10-step mean)", xlabel="step", ylabel="loss", logy=True))
    columns = ["config"] + [f"{t} {k}" for t in tasks for k in ("loss", "vs SGD", "time")] + ["opt step", "helps on"]
    settings = ", ".join(f"`{k}={v}`" for k, v in ALL_ON.items())
    body = ("Tuned constant LR of SGD(momentum 0.9) per task: "
            + ", ".join(f"{t} {lr:g}" for t, lr in tuned.items())
            + f". Seeds {list(seeds)}. `loss` = mean held-out loss, `vs SGD` = ratio to torch SGD "
            f"(< 1 better), `time` = training-step time ratio to torch SGD(foreach), `opt step` = "
            f"`optimizer.step()` time alone on the tiny GPT-2 ({n_params / 1e6:.2f}M parameters) as a ratio "
            f"to torch SGD(foreach) ({step_times['torch_sgd'] * 1e3:.2f} ms). A feature helps "
            f"on a task when it is >= {HELP_MARGIN:.0%} better on the mean and better on every seed.\n\n"
            + markdown_table(rows, columns)
            + f"\nAnchor: |all_off - torch_sgd| mean loss gap = {anchor_gap:.2e}.\n\n"
            f"Never helped on any task: {', '.join(never) if never else 'none'}.\n\n"
            f"`all_on` settings: {settings}.\n")
    data = {"quick": quick, "seeds": list(seeds), "tuned_lr": tuned, "lr_grid": list(LR_GRID),
            "configs": {c: v for c, v in CONFIGS.items()}, "summary": summary, "never_helped": never,
            "anchor_gap": anchor_gap, "opt_step_params": n_params,
            "tuning": [{k: v for k, v in r.items() if k != "losses"} for r in tuning],
            "runs": [{k: v for k, v in r.items() if k != "losses"} for r in records]}
    write_json(out_dir, NAME, data)
    write_markdown(out_dir, NAME, "EnhancedSGD ablation", [("Results", body)])
    data["plots"] = [str(p) for p in plots]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one seed, no LR tuning")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    parser.add_argument("--workers", type=int, default=None, help="processes (default 2, quick 1)")
    args = parser.parse_args()
    data = run(args.out, quick=args.quick, workers=args.workers)
    print((args.out / f"{NAME}.md").read_text())
    print("never helped:", data["never_helped"])


if __name__ == "__main__":
    main()
