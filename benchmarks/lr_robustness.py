"""LR robustness: how much does each optimizer's final loss depend on getting the learning rate right?

For every method of :mod:`benchmarks.registry` and every task of :mod:`benchmarks.tasks`, train at
``lr = default_lr * 10**e`` for ``e`` in ``GRID_EXPONENTS`` (a span of 10^3 around the default), a
fixed step budget, and 3 seeds. A cell's loss is the mean held-out loss over the seeds (``inf`` if any
seed diverged). Every loss is divided by the task's **tuned baseline**: the best cell of AdamW (fused)
+ warm-up/cosine over its own grid, so 1.00 means "as good as tuned AdamW+cosine" and 1.10 means 10%
worse. Per method and task the table reports the normalised loss at the default LR, the median and
the worst over the grid, and the best grid LR.

``mean@default`` (per method) is the mean over tasks of the normalised loss at the default LR, the
figure behind the target "better mean normalised loss than schedule-free AdamW and Prodigy".

Runs are independent, so they are spread over ``workers`` processes (spawned, one torch thread each;
default 2, 1 in quick mode); results do not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, moving_average, plot_lines, write_json, write_markdown
from benchmarks.registry import BASELINE, get_methods
from benchmarks.tasks import get_tasks, run_parallel, train

NAME = "lr_robustness"
GRID_EXPONENTS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
QUICK_GRID_EXPONENTS = (0.0,)
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)
OURS_HEADLINE = "online_adamw"
#: The rows of the grid: ours (pretrained and fresh controller, OnlineSGD) and the anchors. The
#: other front ends (AdaptiveOptimizer, the scheduler, Meta*, EnhancedSGD) are compared in the
#: ``controllers`` and ``enhanced_sgd_ablation`` benchmarks.
ROWS = ("online_adamw", "online_adamw_fresh", "online_sgd", "adamw_fused_cosine", "adamw_constant",
        "schedulefree_adamw", "prodigy")
RIVALS = ("schedulefree_adamw", "prodigy")
#: Start-point invariance: OnlineAdamW from these base LRs on this task, seed 0.
INVARIANCE_TASK = "digits_mlp"
INVARIANCE_LRS = (1e-4, 1e-3, 1e-2)


@functools.lru_cache(maxsize=2)
def _tasks(quick: bool) -> dict[str, Any]:
    return get_tasks(quick)


@functools.lru_cache(maxsize=1)
def _methods() -> dict[str, Any]:
    return {m.name: m for m in get_methods()[0]}


def _run_one(job: tuple[str, str, float, int, bool, bool]) -> dict[str, Any]:
    """One training run; errors are returned, not raised, so one broken method cannot stop the grid."""
    task_name, method_name, lr, seed, quick, keep_curve = job
    record: dict[str, Any] = {"task": task_name, "method": method_name, "lr": lr, "seed": seed}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Prodigy prints on its first step
            result = train(_tasks(quick)[task_name], _methods()[method_name], lr, seed)
    except Exception as err:  # a method's own bug is reported in the table, not fatal
        record["error"] = f"{type(err).__name__}: {err}"
        return record
    record.update(final=result.final_eval_loss, diverged=result.diverged,
                  sec_per_step=result.sec_per_step)
    if keep_curve:
        record.update(losses=result.losses, lrs=result.lrs)
    return record


def _fmt(value: float) -> float | str:
    return "diverged" if value == math.inf else value



def run(out_dir: Path, quick: bool = False, *, methods: Sequence[str] | None = None,
        workers: int | None = None) -> dict[str, Any]:
    """Run the grid, write ``lr_robustness.{json,md}`` and PNGs into ``out_dir``; return the figures."""
    out_dir = Path(out_dir)
    exponents = QUICK_GRID_EXPONENTS if quick else GRID_EXPONENTS
    seeds = QUICK_SEEDS if quick else SEEDS
    wanted = list(ROWS) if methods is None else sorted(set(methods) | {BASELINE})
    method_list, unavailable = get_methods(wanted)
    skipped: dict[str, str] = {}
    tasks = _tasks(quick)
    if workers is None:  # spawning workers costs more than the quick grid itself
        workers = 1 if quick else min(2, os.cpu_count() or 1)

    # longest task first so the pool stays busy to the end
    order = sorted(tasks, key=lambda n: -tasks[n].steps * (10 if "gpt" in n else 1))
    jobs = [(t, m.name, m.default_lr * 10 ** e, s, quick, e == 0.0 and s == seeds[0])
            for t in order for m in method_list for e in exponents for s in seeds]
    invariance_jobs = [(INVARIANCE_TASK, OURS_HEADLINE, lr, seeds[0], quick, True) for lr in INVARIANCE_LRS] \
        if OURS_HEADLINE in {m.name for m in method_list} and INVARIANCE_TASK in tasks else []
    records = run_parallel(_run_one, jobs + invariance_jobs, workers, label=NAME)
    records, invariance_records = records[:len(jobs)], records[len(jobs):]

    errors = {r["method"]: r["error"] for r in records if "error" in r}
    cells: dict[tuple[str, str, float], list[float]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {t: {} for t in tasks}
    for r in records:
        if "error" in r:
            continue
        exponent = round(math.log10(r["lr"] / _methods()[r["method"]].default_lr), 2)
        cells.setdefault((r["task"], r["method"], exponent), []).append(r["final"])
        if "losses" in r:
            curves[r["task"]][r["method"]] = {"losses": r["losses"], "lrs": r["lrs"]}

    def cell(task: str, method: str, e: float) -> float:
        finals = cells.get((task, method, e), [])
        return statistics.fmean(finals) if finals and all(map(math.isfinite, finals)) else math.inf

    baseline = {t: min(cell(t, BASELINE, e) for e in exponents) for t in tasks}
    ran = [m for m in method_list if m.name not in errors]
    per_task: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in tasks}
    for t in tasks:
        for m in ran:
            norm = [cell(t, m.name, e) / baseline[t] for e in exponents]
            best = min(range(len(exponents)), key=lambda i: norm[i])
            per_task[t][m.name] = {
                "default_lr": m.default_lr,
                "grid_lrs": [m.default_lr * 10 ** e for e in exponents],
                "normalised": norm,
                "at_default": norm[exponents.index(0.0)],
                "grid_median": statistics.median(norm),
                "grid_worst": max(norm),
                "best_lr": m.default_lr * 10 ** exponents[best],
                "best": norm[best],
            }

    summary = {}
    for m in ran:
        rows = [per_task[t][m.name] for t in tasks]
        summary[m.name] = {
            "mean_at_default": statistics.fmean(r["at_default"] for r in rows),
            "mean_grid_median": statistics.fmean(r["grid_median"] for r in rows),
            "worst_at_default": max(r["at_default"] for r in rows),
            "worst_over_grid": max(r["grid_worst"] for r in rows),
        }

    targets = _targets(summary, unavailable, errors, per_task)
    data = {"quick": quick, "grid_exponents": list(exponents), "seeds": list(seeds),
            "steps": {t: tasks[t].steps for t in tasks},
            "tasks": {t: tasks[t].description for t in tasks}, "baseline_method": BASELINE,
            "baseline_loss": baseline, "per_task": per_task, "summary": summary, "targets": targets,
            "unavailable": unavailable, "skipped": skipped, "errors": errors, "default_lr_curves": curves,
            "invariance": _invariance(invariance_records)}
    targets.extend(_invariance_targets(data["invariance"]))
    write_json(out_dir, NAME, data)
    _write_report(out_dir, data, ran)
    return data


def _invariance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per start LR: the effective LR (base LR x mean step scale x schedule) every step."""
    runs = {}
    for r in records:
        if "error" in r or "lrs" not in r:
            continue
        runs[f"{r['lr']:g}"] = {"effective_lrs": r["lrs"], "final": _fmt(r["final"]),
                                "end_effective_lr": statistics.fmean(r["lrs"][-30:]) if r["lrs"] else math.nan,
                                "peak_effective_lr": max(r["lrs"], default=math.nan)}
    return {"task": INVARIANCE_TASK, "runs": runs}


def _invariance_targets(inv: dict[str, Any]) -> list[dict[str, Any]]:
    runs = inv["runs"]
    if len(runs) < 2:
        return []
    # the schedule anneals every run to ~0 at the end; compare the controller's level where it
    # peaks (the LR the feedback settled on) and the mean over the last 30 steps
    peaks = [r["peak_effective_lr"] for r in runs.values()]
    ends = [r["end_effective_lr"] for r in runs.values()]
    out = []
    for label, values in (("peak", peaks), ("last-30-step", ends)):
        spread = max(values) / max(min(values), 1e-30)
        out.append({"target": f"start-point invariance on {inv['task']}: max/min {label} effective LR "
                              f"from base LRs {', '.join(runs)}", "value": spread, "threshold": 2.0,
                    "met": "yes" if spread <= 2.0 else "NO"})
    return out


#: issue 16's targets for the default LR (normalised to tuned AdamW+cosine): the mean over tasks,
#: the worst task, and the worst cell of the whole grid
MEAN_TARGET, WORST_TARGET, GRID_TARGET = 1.10, 1.30, 2.0


def _targets(summary: dict[str, dict[str, float]], unavailable: dict[str, str],
             errors: dict[str, str], per_task: dict[str, dict[str, dict[str, Any]]] | None = None
             ) -> list[dict[str, Any]]:
    ours = summary.get(OURS_HEADLINE)
    missing = unavailable.get(OURS_HEADLINE) or errors.get(OURS_HEADLINE) or "not run"

    def row(target: str, value: float | None, threshold: float | None, ok: bool | None) -> dict:
        return {"target": target, "value": "n/a" if value is None else _fmt(value),
                "threshold": threshold if threshold is not None else "",
                "met": "n/a" if ok is None else ("yes" if ok else "NO")}

    if ours is None:
        note = f"OnlineAdamW {missing}"
        return [row(f"{note}: mean at the default LR", None, MEAN_TARGET, None),
                row(f"{note}: worst task at the default LR", None, WORST_TARGET, None),
                row(f"{note}: worst case of the grid", None, GRID_TARGET, None),
                row(f"{note}: beats schedule-free and Prodigy at their defaults on every task", None, None, None)]
    rows = [
        row("OnlineAdamW at default LR, mean over tasks (normalised)", ours["mean_at_default"], MEAN_TARGET,
            ours["mean_at_default"] <= MEAN_TARGET),
        row("OnlineAdamW at default LR, worst task (normalised)", ours["worst_at_default"], WORST_TARGET,
            ours["worst_at_default"] <= WORST_TARGET),
        row("OnlineAdamW worst case over the grid, worst task", ours["worst_over_grid"], GRID_TARGET,
            ours["worst_over_grid"] <= GRID_TARGET),
    ]
    present = [n for n in RIVALS if n in summary]
    if per_task and present:
        # ratio > 1 means ours is worse than the better rival at their defaults on that task
        ratios = {t: per_task[t][OURS_HEADLINE]["at_default"] /
                  min(per_task[t][n]["at_default"] for n in present) for t in per_task}
        worst_task = max(ratios, key=ratios.get)
        rows.append(row(f"OnlineAdamW@default / best of {' / '.join(present)}@default, worst task "
                        f"({worst_task}); < 1 on every task", ratios[worst_task], 1.0,
                        ratios[worst_task] < 1.0))
    return rows


def _write_report(out_dir: Path, data: dict[str, Any], ran: list) -> None:
    tasks = list(data["tasks"])
    sections = [("Setup", "\n".join(
        [f"- grid: default LR x 10^e for e in {data['grid_exponents']}; seeds {data['seeds']}; "
         f"normalised to the best {data['baseline_method']} cell per task (1.00 = tuned AdamW+cosine)"]
        + [f"- `{t}` ({data['steps'][t]} steps): {d}; baseline loss "
           f"{data['baseline_loss'][t]:.4g}" for t, d in data["tasks"].items()]) + "\n")]
    sections.append(("Targets", markdown_table(data["targets"], ["target", "value", "threshold", "met"])))
    summary_rows = [{"method": m.name, "default lr": m.default_lr,
                     **{k: _fmt(v) for k, v in data["summary"][m.name].items()}} for m in ran]
    sections.append(("Summary over tasks (normalised loss, lower is better)", markdown_table(
        summary_rows, ["method", "default lr", "mean_at_default", "mean_grid_median",
                       "worst_at_default", "worst_over_grid"])))
    for t in tasks:
        rows = [{"method": name, "at default": _fmt(r["at_default"]),
                 "grid median": _fmt(r["grid_median"]), "grid worst": _fmt(r["grid_worst"]),
                 "best": _fmt(r["best"]), "best lr": r["best_lr"]}
                for name, r in data["per_task"][t].items()]
        sections.append((f"{t}: normalised final loss", markdown_table(rows) +
                         f"\n![{t}]({NAME}_{t}.png)\n"))
        plot_lines(out_dir / f"{NAME}_{t}.png",
                   {name: ([10 ** e for e in data["grid_exponents"]],
                           [v if math.isfinite(v) else math.nan for v in r["normalised"]])
                    for name, r in data["per_task"][t].items()},
                   title=f"{t}: final loss vs LR (diverged runs omitted)",
                   xlabel="LR / method's default LR", ylabel="loss / tuned AdamW+cosine",
                   logx=True, logy=True)
        curves = data["default_lr_curves"][t]
        if curves:
            plot_lines(out_dir / f"{NAME}_{t}_curves.png",
                       {name: moving_average(c["losses"]) for name, c in curves.items()},
                       title=f"{t}: training loss at the default LR (seed 0, 10-step mean)",
                       xlabel="step", ylabel="training loss", logy=True)
            sections[-1] = (sections[-1][0], sections[-1][1] + f"\n![{t} curves]({NAME}_{t}_curves.png)\n")
    inv = data.get("invariance", {}).get("runs", {})
    if inv:
        plot_lines(out_dir / f"{NAME}_invariance.png",
                   {f"base lr {k}": v["effective_lrs"] for k, v in inv.items()},
                   title=f"OnlineAdamW effective LR on {data['invariance']['task']} from three start LRs",
                   xlabel="step", ylabel="effective LR (base x mean scale x schedule)", logy=True)
        rows = [{"base lr": k, "peak effective lr": v["peak_effective_lr"],
                 "mean effective lr, last 30 steps": v["end_effective_lr"], "final loss": v["final"]}
                for k, v in inv.items()]
        sections.append(("Start-point invariance", markdown_table(rows) +
                         f"\n![invariance]({NAME}_invariance.png)\n"))
    missing = {**data["unavailable"], **{k: f"skipped: {v}" for k, v in data["skipped"].items()},
               **{k: f"failed: {v}" for k, v in data["errors"].items()}}
    if missing:
        sections.append(("Not in the tables", "\n".join(f"- `{k}`: {v}" for k, v in missing.items())
                         + "\n"))
    write_markdown(out_dir, NAME, "LR robustness", sections)
