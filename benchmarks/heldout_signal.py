"""Held-out pooling: does a validation loss fed to OnlineAdamW lower its test loss?

Users who evaluate while they train (the HF Trainer's ``eval_strategy``, which ``AdaptiveCallback``
feeds; ``opt.observe(eval_loss=)`` in a plain loop) give the controller a held-out loss. After two
readings in a row above 1.01x the best so far it pulls each tensor's own lr move back towards the
tensors' common move (``controllers.online.EVAL_POOL_RATE``, docs/online.md). This benchmark measures that on
tasks the rule was not chosen on: the five from-scratch tasks of ``lr_robustness`` and the
all-MiniLM-L6-v2 fine-tune of ``finetune_pretrained`` (from its default lr 1e-3 and from 5e-5).

Each task's training data is split once (fixed with ``DATA_SEED``): ``VAL_FRACTION`` of it (the LMs:
the last ``LM_VAL_FRACTION`` of their training text) becomes the validation split and the rest is
trained on. Both rows train on the same part, from the same seeds, and read the validation loss every
``EVAL_EVERY`` steps:

* ``online_adamw``: OnlineAdamW at its default lr, told the horizon, fed the training loss, never the
  validation loss (what the suite's row does, on less data);
* ``online_adamw_eval``: the same, and each validation reading is fed with ``observe(eval_loss=)``.

Judged on each task's own test data, which neither row sees. Reported: the mean test loss of each
row, their ratio (fed / not fed), seeds ahead, and the steps the pooling acted on. Nothing in the rule
was chosen on these tasks: its two constants come from ``scripts/rl_dev.py``'s glyphs, noisy
regression and LM tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import finetune_pretrained as ft
from benchmarks.common import markdown_table, plot_lines, write_json, write_markdown
from benchmarks.tasks import (
    DATA_SEED,
    DIGITS_BATCH,
    REGRESSION_BATCH,
    Driver,
    Method,
    Task,
    _digits,
    _lm_tokens,
    _minibatches,
    _regression,
    block_batches,
    eval_blocks,
    get_tasks,
    run_parallel,
    train,
)

NAME = "heldout_signal"
SUITE_TASKS = ("tiny_gpt2_lm", "tiny_gpt2_lm_600", "digits_cnn", "digits_mlp", "noisy_regression")
FINETUNE = "finetune_pretrained"
FINETUNE_LRS = (ft.DEFAULT_LR, ft.FINETUNE_LR)
ROWS = ("online_adamw", "online_adamw_eval")
VAL_FRACTION, LM_VAL_FRACTION = 0.2, 0.1
EVAL_EVERY = 10
DEFAULT_LR = 1e-3
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
#: a fed validation loss must not cost: the worst cell's test-loss ratio (fed / not fed)
WORST_TARGET = 1.0


def _split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(fit indices, validation indices): a fixed shuffle of ``range(n)``, ``fraction`` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SEED))
    cut = n - max(1, int(fraction * n))
    return order[:cut], order[cut:]


@functools.lru_cache(maxsize=2)
def _suite_task(name: str, quick: bool) -> tuple[Task, Callable[[nn.Module], float]]:
    """``name`` of the suite trained on its fit split, and its validation loss."""
    base = get_tasks(quick)[name]
    if name.startswith("tiny_gpt2_lm"):
        tokens = _lm_tokens()[0]
        cut = int((1.0 - LM_VAL_FRACTION) * len(tokens))
        fit, val = tokens[:cut], eval_blocks(tokens[cut:])
        return (dataclasses.replace(base, batches=lambda seed: block_batches(fit, seed)),
                lambda model: base.loss(model, val).item())
    if name.startswith("digits"):
        x, y, batch = *_digits()[:2], DIGITS_BATCH
    elif name == "noisy_regression":
        x, y, batch = *_regression()[:2], REGRESSION_BATCH
    else:
        raise ValueError(f"{NAME}: no validation split for task {name!r}")
    fit, val = _split(len(x), VAL_FRACTION)
    return (dataclasses.replace(base, batches=lambda seed: _minibatches(x[fit], y[fit], batch, seed)),
            lambda model: base.loss(model, (x[val], y[val])).item())


@functools.lru_cache(maxsize=1)
def _finetune_task(data_path: str, steps: int) -> tuple[Task, Callable[[nn.Module], float]]:
    """The fine-tune trained on its fit split (tested on its held-out data), and its validation loss."""
    data = torch.load(data_path, weights_only=True)
    fit, val = _split(data["train_labels"].shape[0], VAL_FRACTION)
    train_part = {k: (v[fit] if k.startswith("train_") else v) for k, v in data.items()}
    val_part = {k.replace("train_", "eval_"): v[val] for k, v in data.items() if k.startswith("train_")}
    return ft.make_task(train_part, steps), lambda model: ft._eval(model, val_part)["eval_loss"]


def _method(row: str, base: Method, validation: Callable[[nn.Module], float], models: list[nn.Module],
            trace: dict[str, list[float]]) -> Method:
    """``base`` with a validation reading every ``EVAL_EVERY`` steps, fed to the optimizer for
    ``online_adamw_eval``; ``trace`` collects the readings and the steps the pooling acted on."""

    def build(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
        driver = base.build(params, lr, total)
        opt, on_loss, steps = driver.optimizer, driver.on_loss, [0]

        def observe(loss: Tensor) -> None:
            if on_loss is not None:
                on_loss(loss)
            steps[0] += 1
            state = opt.online_controller.state
            trace["pooled"].append(float(state is not None and state.eval_pooling))
            if steps[0] % EVAL_EVERY == 0 and steps[0] < total:
                model = models[-1]
                model.eval()
                with torch.no_grad():
                    value = validation(model)
                model.train()
                trace["val"].append(value)
                if row == "online_adamw_eval":
                    opt.observe(eval_loss=value)

        driver.on_loss = observe
        return driver

    return dataclasses.replace(base, name=row, build=build)


def run_cell(job: tuple[str, str, float, int, bool, str]) -> dict[str, Any]:
    """One run ``(task, row, lr, seed, quick, fine-tune data file)``; errors are returned, not raised."""
    task_name, row, lr, seed, quick, data_path = job
    record: dict[str, Any] = {"task": task_name, "row": row, "lr": lr, "seed": seed}
    try:
        if task_name == FINETUNE:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            task, validation = _finetune_task(data_path, ft.QUICK["steps"] if quick else ft.STEPS)
            base = ft.METHODS["online_adamw"]
        else:
            from benchmarks.registry import get_methods

            task, validation = _suite_task(task_name, quick)
            base = next(m for m in get_methods()[0] if m.name == "online_adamw")
        models: list[nn.Module] = []
        trace: dict[str, list[float]] = {"val": [], "pooled": []}
        build_model = task.build_model
        task = dataclasses.replace(task, build_model=lambda s: models.append(build_model(s)) or models[-1])
        with contextlib.redirect_stdout(io.StringIO()):
            result = train(task, _method(row, base, validation, models, trace), lr, seed)
    except Exception as err:  # reported in the table, not fatal
        record["error"] = f"{type(err).__name__}: {err}"
        return record
    record.update(final=result.final_eval_loss, diverged=result.diverged, val=trace["val"],
                  pooled_steps=int(sum(trace["pooled"])), steps=len(result.losses))
    return record


def jobs(quick: bool, seeds: Sequence[int], data_path: str) -> list[tuple[str, str, float, int, bool, str]]:
    cells = [(t, DEFAULT_LR) for t in SUITE_TASKS] + [(FINETUNE, lr) for lr in FINETUNE_LRS]
    return [(task, row, lr, seed, quick, data_path if task == FINETUNE else "")
            for task, lr in cells for seed in seeds for row in ROWS]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, lr): both rows' mean test loss, their ratio, seeds ahead, pooled steps."""
    cells: dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in records:
        if "error" not in r:
            cells.setdefault((r["task"], r["lr"]), {}).setdefault(r["row"], {})[r["seed"]] = r
    out = []
    for (task, lr), by_row in cells.items():
        plain, fed = by_row.get("online_adamw", {}), by_row.get("online_adamw_eval", {})
        seeds = sorted(set(plain) & set(fed))
        if not seeds:
            continue
        a = [plain[s]["final"] for s in seeds]
        b = [fed[s]["final"] for s in seeds]
        finite = all(map(math.isfinite, a + b))
        mean_a = statistics.fmean(a) if finite else math.inf
        mean_b = statistics.fmean(b) if finite else math.inf
        out.append({"task": task, "lr": lr, "seeds": len(seeds), "not fed": mean_a, "eval_loss fed": mean_b,
                    "ratio": mean_b / mean_a if finite and mean_a > 0 else math.nan,
                    "seeds ahead": sum(y < x for x, y in zip(a, b, strict=True)),
                    "pooled steps": statistics.fmean(fed[s]["pooled_steps"] for s in seeds),
                    "steps": fed[seeds[0]]["steps"]})
    return out


def targets(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ratios = [(r["ratio"], r["task"], r["lr"]) for r in table if math.isfinite(r["ratio"])]
    if not ratios:
        return []
    worst = max(ratios)
    geo = math.exp(statistics.fmean(math.log(x) for x, _, _ in ratios))
    return [{"target": f"OnlineAdamW fed a validation loss / not fed, test loss, worst cell ({worst[1]} at "
                       f"{worst[2]:g})", "value": worst[0], "threshold": WORST_TARGET,
             "met": worst[0] <= WORST_TARGET},
            {"target": "the same, geometric mean over the cells", "value": geo, "threshold": 1.0, "met": geo < 1.0}]


def run(out_dir: Path, quick: bool = False, *, workers: int | None = None,
        seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Both rows on every cell over the seeds; write ``heldout_signal.{json,md}`` and a PNG per cell."""
    out_dir = Path(out_dir)
    seeds = tuple(seeds) if seeds is not None else (QUICK_SEEDS if quick else SEEDS)
    if workers is None:
        workers = 1 if quick else min(2, os.cpu_count() or 1)
    train_n, eval_n = (ft.QUICK["train_per_class"], ft.QUICK["eval_per_class"]) if quick else \
        (ft.TRAIN_PER_CLASS, ft.EVAL_PER_CLASS)
    with tempfile.TemporaryDirectory(prefix="heldout-bench-") as tmp:
        data_path = str(Path(tmp) / "finetune.pt")
        torch.save(ft.build_data(ft.LIBRARIES, train_n, eval_n), data_path)
        records = run_parallel(run_cell, jobs(quick, seeds, data_path), workers, label=NAME)
    table = summarise(records)
    errors = [r for r in records if "error" in r]
    data = {"table": table, "targets": targets(table), "records": records, "errors": errors,
            "seeds": list(seeds), "eval_every": EVAL_EVERY, "val_fraction": VAL_FRACTION,
            "lm_val_fraction": LM_VAL_FRACTION}
    write_json(out_dir, NAME, data)
    plots = []
    for row in table:
        curves = {}
        for name in ROWS:
            runs = [r["val"] for r in records if "error" not in r and r["task"] == row["task"]
                    and r["lr"] == row["lr"] and r["row"] == name and r["val"]]
            if runs:
                n = min(map(len, runs))
                curves[name] = ([EVAL_EVERY * (i + 1) for i in range(n)],
                                [statistics.fmean(v[i] for v in runs) for i in range(n)])
        if curves:
            path = out_dir / f"{NAME}_{row['task']}_{row['lr']:g}.png"
            plot_lines(path, curves, title=f"{row['task']} from lr {row['lr']:g}: validation loss",
                       xlabel="step", ylabel="validation loss (mean over seeds)")
            plots.append(path.name)
    columns = ["task", "lr", "seeds", "not fed", "eval_loss fed", "ratio", "seeds ahead", "pooled steps", "steps"]
    setup = (f"- each task's training data split once: {VAL_FRACTION:.0%} held out for validation (the LMs: the "
             f"last {LM_VAL_FRACTION:.0%} of their training text), the rest trained on; test data as in "
             f"`lr_robustness` / `finetune_pretrained`, seen by neither row\n"
             f"- both rows: OnlineAdamW at its defaults, told the horizon, fed the training loss; a validation "
             f"reading every {EVAL_EVERY} steps, fed with `observe(eval_loss=)` only to `online_adamw_eval`\n"
             f"- seeds {list(seeds)}; `pooled steps`: steps on which the held-out pooling acted (mean over seeds)\n")
    sections = [("Setup", setup),
                ("Targets", markdown_table(data["targets"], ["target", "value", "threshold", "met"])),
                ("Test loss", markdown_table(table, columns)),
                ("Validation curves", "\n".join(f"![{p}]({p})" for p in plots) + "\n")]
    if errors:
        sections.append(("Errors", markdown_table(errors, ["task", "row", "lr", "seed", "error"])))
    write_markdown(out_dir, NAME, "Held-out pooling: a fed validation loss", sections)
    return data
