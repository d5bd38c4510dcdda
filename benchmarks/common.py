"""Shared plumbing for every benchmark: timing, memory, and the JSON / markdown / PNG outputs.

Each benchmark module exposes ``run(out_dir: Path, quick: bool = False) -> dict`` and writes
its own ``<name>.json``, ``<name>.md`` and PNG plots into ``out_dir`` with the helpers here.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def median_time(fn: Callable[[], Any], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds (synchronising CUDA if present)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def moving_average(values: Sequence[float], width: int = 10) -> list[float]:
    """Trailing mean over the last ``width`` values (fewer at the start), for readable loss curves."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def write_json(out_dir: Path, name: str, data: dict[str, Any]) -> Path:
    """``<name>.json``: standard JSON, so non-finite numbers (a diverged run) are written as strings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = _finite_json({"benchmark": name, "machine": machine_info(), **data})
    path.write_text(json.dumps(payload, indent=2, default=_jsonable, allow_nan=False))
    return path


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (dicts), columns in ``columns`` order."""
    if not rows:
        return "_no rows_\n"
    cols = list(columns) if columns is not None else list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(format_number(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(out_dir: Path, name: str, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write ``<name>.md`` with a title and (heading, body) sections; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n", f"_{machine_info()['time']}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads_\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body}")
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(parts))
    return path


def plot_lines(path: Path, series: dict[str, Sequence[float]] | dict[str, tuple[Sequence[float], Sequence[float]]],
               *, title: str, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False) -> Path:
    """One PNG line plot; ``series`` maps a label to ys (x = index) or to (xs, ys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = ("-", "--", ":", "-.")
    for index, (label, data) in enumerate(series.items()):
        if isinstance(data, tuple):
            xs, ys = data
        else:
            ys = list(data)
            xs = list(range(1, len(ys) + 1))
        ax.plot(xs, ys, label=label, marker="o" if len(ys) <= 12 else None, linewidth=1.4,
                linestyle=styles[(index // 10) % len(styles)])  # 10 colours, then a new style
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
