"""Step time and memory of the Online optimizers (controller on) against torch's optimizers.

``python -m benchmarks.step_overhead [--quick] [--out DIR]``

Parameters with GPT-2-small shapes (148 tensors, 124.4M parameters) and a 10x smaller
set with the same 148-tensor layout (n_embd 200, vocab 30000: 12.0M), random gradients
fixed across steps, lr small enough that nothing drifts. Each optimizer is timed *interleaved with
its baseline* on the same parameters: after warm-up, rounds of one ``step()`` of each, in
alternating order (A B, B A, ...), so a slow spell of the machine (it is shared and noisy: one
earlier run read 1.81x for a ratio that another read 1.08x) hits both alike; its ``ratio`` is the
median over rounds of (its time / the baseline's time in that round), ``ms_per_step`` the median
of its own times. Baselines: torch AdamW(fused=True) for OnlineAdamW, torch SGD(momentum=0.9,
foreach=True) for OnlineSGD, torch RMSprop(foreach=True) for OnlineRMSProp.
The Online optimizers are fed ``observe(loss=..., reward=..., grad_norm=...)`` each step, as
``AdaptiveCallback`` feeds them from the HF Trainer, so the whole controller (features, learning,
exploration, knobs) runs; the "plain loop" row is fed the loss only, so its finite check reads
every gradient.

Memory, two honest figures:

* ``state_mb``: bytes of every tensor the optimizer holds (its ``state``; for Online
  optimizers also the controller's samples, hidden states, weights and Adam state),
  counted in-process, for every optimizer including the extra ones.
* ``peak_rss_mb``: peak resident-set growth of a fresh ``python`` subprocess from just
  before the optimizer is built to after 3 steps (``VmHWM`` minus ``VmRSS`` with the
  parameters and gradients already allocated): state plus every temporary. Built-in
  optimizers only (a subprocess cannot receive an arbitrary factory).

``run(out_dir, quick=False, extra=None)``: ``extra`` maps a display name to
``factory(params) -> optimizer`` (the benchmark registry adds its competitors this way);
they are timed against torch AdamW(fused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, write_json, write_markdown

NAME = "step_overhead"
Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
TARGET = 1.10
#: issue 17's targets: fed as the HF Trainer feeds them (loss, reward, grad norm), and a plain loop
TARGETS = {"OnlineAdamW": TARGET, "OnlineSGD": TARGET, "OnlineAdamW (plain loop: loss only)": 1.25}


def gpt2_shapes(n_embd: int = 768, vocab: int = 50257, n_ctx: int = 1024, n_layer: int = 12) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2 LM (tied head): 2 embeddings, 12 per block, final LayerNorm."""
    shapes: list[tuple[int, ...]] = [(vocab, n_embd), (n_ctx, n_embd)]
    for _ in range(n_layer):
        shapes += [(n_embd,), (n_embd,), (n_embd, 3 * n_embd), (3 * n_embd,), (n_embd, n_embd), (n_embd,),
                   (n_embd,), (n_embd,), (n_embd, 4 * n_embd), (4 * n_embd,), (4 * n_embd, n_embd), (n_embd,)]
    return shapes + [(n_embd,), (n_embd,)]


SHAPE_SETS: dict[str, dict[str, int]] = {
    "gpt2-small": {"n_embd": 768, "vocab": 50257},
    "gpt2-small/10": {"n_embd": 200, "vocab": 30000},
}


def _online(name: str, plain_loop: bool = False, **kwargs: Any) -> Factory:
    """``plain_loop``: fed only the loss, as in a plain torch loop (no grad norm: the optimizer's
    own finite check reads every gradient)."""
    def build(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        from adaptiverl.optim import online

        opt = getattr(online, name)(params, **kwargs)
        opt.benchmark_feed = "loss" if plain_loop else "trainer"
        return opt

    return build


# name -> (factory, baseline name or None)
BUILTIN: dict[str, tuple[Factory, str | None]] = {
    "torch AdamW (fused)": (lambda p: torch.optim.AdamW(p, lr=1e-5, fused=True), None),
    "torch AdamW (foreach)": (lambda p: torch.optim.AdamW(p, lr=1e-5, foreach=True), "torch AdamW (fused)"),
    "torch SGD (foreach)": (lambda p: torch.optim.SGD(p, lr=1e-5, momentum=0.9, foreach=True), None),
    "torch RMSprop (foreach)": (lambda p: torch.optim.RMSprop(p, lr=1e-6, foreach=True), None),
    "OnlineAdamW": (_online("OnlineAdamW", lr=1e-5), "torch AdamW (fused)"),
    "OnlineAdamW (plain loop: loss only)": (_online("OnlineAdamW", lr=1e-5, plain_loop=True),
                                            "torch AdamW (fused)"),
    "OnlineSGD": (_online("OnlineSGD", lr=1e-5, momentum=0.9), "torch SGD (foreach)"),
    "OnlineRMSProp": (_online("OnlineRMSProp", lr=1e-6), "torch RMSprop (foreach)"),
}


def make_params(shape_set: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in gpt2_shapes(**SHAPE_SETS[shape_set]):
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def _feed(opt: torch.optim.Optimizer, step: int) -> None:
    """Loss, reward and the total grad norm, as AdaptiveCallback feeds them from the HF Trainer
    (which computes the norm for clipping anyway; under ``finite_check="auto"`` it is the
    optimizer's finite check, so the default rows pay nothing for it)."""
    if getattr(opt, "benchmark_feed", None) == "loss":
        opt.observe(loss=3.0 - 1e-3 * step)
    elif hasattr(opt, "observe"):
        opt.observe(loss=3.0 - 1e-3 * step, reward=0.1 + 1e-3 * (step % 7), grad_norm=1.0)


def _timed_step(opt: torch.optim.Optimizer, step: int) -> float:
    _feed(opt, step)
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def time_pair(opt: torch.optim.Optimizer, baseline: torch.optim.Optimizer, rounds: int,
              warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per ``step()`` of ``opt`` and of ``baseline``, interleaved: ``warmup`` untimed steps
    of each, then ``rounds`` rounds of one step each, the order alternating every round."""
    for i in range(warmup):
        _timed_step(opt, i)
        _timed_step(baseline, i)
    ours, theirs = [], []
    for i in range(rounds):
        if i % 2:
            theirs.append(_timed_step(baseline, warmup + i))
            ours.append(_timed_step(opt, warmup + i))
        else:
            ours.append(_timed_step(opt, warmup + i))
            theirs.append(_timed_step(baseline, warmup + i))
    return ours, theirs


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every distinct tensor storage the optimizer (and its controller) holds."""
    seen: set[int] = set()
    total = 0

    def add(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                add(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                add(v)

    add(list(opt.state.values()))
    online = getattr(opt, "online_controller", None)
    if online is not None:
        add(online.state_dict()["ctl"] or {})
        add(list(online.network.parameters()))
    return total


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(name: str, shape_set: str) -> None:
    """Subprocess body: peak RSS growth (MB) of building ``name`` and taking 3 steps."""
    params = make_params(shape_set)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    opt = BUILTIN[name][0](params)
    for i in range(3):
        _feed(opt, i)
        opt.step()
    print(json.dumps({"peak_rss_mb": (_rss_kb("VmHWM") - base) / 1024}))


def peak_rss_mb(name: str, shape_set: str) -> float | None:
    if not Path("/proc/self/clear_refs").exists():
        return None
    out = subprocess.run([sys.executable, "-m", "benchmarks.step_overhead", "--memory-child", name, shape_set],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def _bar_plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["shapes"] for r in rows}, key=list(SHAPE_SETS).index)
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), dpi=110, squeeze=False)
    for ax, shape_set in zip(axes[0], sets, strict=True):
        sub = [r for r in rows if r["shapes"] == shape_set]
        colors = ["tab:orange" if r["optimizer"].startswith("Online") else "tab:blue" for r in sub]
        ax.barh([r["optimizer"] for r in sub], [r["ms_per_step"] for r in sub], color=colors)
        for i, r in enumerate(sub):
            if r.get("ratio") is not None:
                ax.text(r["ms_per_step"], i, f" {r['ratio']:.2f}x", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"{shape_set}: median step time", xlabel="ms per step")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(out_dir: Path, quick: bool = False, extra: dict[str, Factory] | None = None) -> dict[str, Any]:
    optimizers: dict[str, tuple[Factory, str | None]] = dict(BUILTIN)
    for name, factory in (extra or {}).items():
        if name in optimizers:
            raise ValueError(f"step_overhead: extra optimizer name {name!r} clashes with a built-in one")
        optimizers[name] = (factory, "torch AdamW (fused)")
    shape_sets = ["gpt2-small/10"] if quick else list(SHAPE_SETS)
    steps, warmup = (3, 1) if quick else (15, 3)
    rows: list[dict[str, Any]] = []
    for shape_set in shape_sets:
        params = make_params(shape_set)
        n_params = sum(p.numel() for p in params)
        times: dict[str, list[float]] = {}
        ratios: dict[str, float] = {}
        states: dict[str, int] = {}
        for name, (factory, baseline) in optimizers.items():
            if baseline is None:
                continue
            opt, base = factory(params), optimizers[baseline][0](params)
            ours, theirs = time_pair(opt, base, steps, warmup)
            times.setdefault(name, []).extend(ours)
            times.setdefault(baseline, []).extend(theirs)
            ratios[name] = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            states[name], states[baseline] = state_bytes(opt), state_bytes(base)
            del opt, base
        for name, (_, baseline) in optimizers.items():
            rows.append({
                "shapes": shape_set, "tensors": len(params), "params_M": n_params / 1e6, "optimizer": name,
                "ms_per_step": statistics.median(times[name]) * 1e3, "baseline": baseline or "-",
                "ratio": ratios.get(name), "state_mb": states[name] / 2**20,
                "peak_rss_mb": None if quick or name not in BUILTIN else peak_rss_mb(name, shape_set),
            })
        del params
    targets = []
    for row in rows:
        threshold = TARGETS.get(row["optimizer"])
        if threshold is not None and row["shapes"] == shape_sets[0]:
            targets.append({"target": f"{row['optimizer']} step time / {row['baseline']} ({row['shapes']})",
                            "value": row["ratio"], "threshold": f"<= {threshold}", "met": row["ratio"] <= threshold})
    columns = ["shapes", "optimizer", "ms_per_step", "baseline", "ratio", "state_mb", "peak_rss_mb"]
    body = (f"Each optimizer timed interleaved with its baseline on the same parameters: {warmup} warm-up "
            f"steps of each, then {steps} rounds of one `step()` of each in alternating order, "
            f"{torch.get_num_threads()} threads. `ratio` = median over rounds of its time / the baseline's "
            "time in that round; `ms_per_step` = median of its own times (a baseline's: over all its rounds). "
            "`state_mb` = optimizer-held tensor bytes (Online: + controller); `peak_rss_mb` = peak RSS "
            "growth of a fresh subprocess building the optimizer and taking 3 steps (state + temporaries).\n\n"
            + markdown_table([{k: ("-" if r[k] is None else r[k]) for k in columns} for r in rows], columns)
            + "\n" + markdown_table(targets, ["target", "value", "threshold", "met"]))
    plot = _bar_plot(out_dir / f"{NAME}.png", rows)
    data = {"quick": quick, "steps": steps, "warmup": warmup, "rows": rows, "targets": targets,
            "plots": [str(plot)]}
    write_json(out_dir, NAME, data)
    write_markdown(out_dir, NAME, "Optimizer step overhead", [("Results", body)])
    return data


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller shapes only, few steps, no RSS")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/reports/latest"), help="output folder")
    parser.add_argument("--memory-child", nargs=2, metavar=("OPTIMIZER", "SHAPES"), help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    data = run(args.out, quick=args.quick)
    for target in data["targets"]:
        print(f"{target['target']}: {target['value']:.3f} ({'met' if target['met'] else 'NOT met'})")
    print(f"wrote {args.out / (NAME + '.md')}")


if __name__ == "__main__":
    main()
