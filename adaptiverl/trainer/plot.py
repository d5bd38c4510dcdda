"""The run's dynamics as a PNG: loss, reward, learning rate and momentum/betas over steps.

Reads the per-step history ``AdaptiveCallback`` writes
(``OUTPUT_DIR/adaptive_history.jsonl``); ``adaptiverl plot OUTPUT_DIR`` calls
:func:`plot_dynamics` on a finished (or running) job.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptiverl.trainer.callback import HISTORY_FILE

PLOT_FILE = "dynamics.png"
MOMENTUM_KEYS = ("momentum", "beta1", "beta2", "alpha")


def read_history(output_dir: str | Path) -> list[dict[str, float]]:
    path = Path(output_dir) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {HISTORY_FILE} in {Path(output_dir).resolve()}: "
                                "is it the OUTPUT_DIR of a run trained with AdaptiveCallback?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no steps yet")
    return rows


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_dynamics(output_dir: str | Path, out_file: str | Path | None = None) -> Path:
    """Draw loss, reward, LR (the controller's and the scheduler's) and momentum/betas; return the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(output_dir)
    out = Path(out_file) if out_file is not None else Path(output_dir) / PLOT_FILE
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    panels = (
        ("loss", [("loss", "loss")]),
        ("reward", [("reward", "batch reward")]),
        ("learning rate", [("lr", "effective (controller)"), ("scheduler_lr", "scheduler")]),
        ("momentum / betas", [(k, k) for k in MOMENTUM_KEYS]),
    )
    for ax, (title, series) in zip(axes, panels, strict=True):
        drawn = False
        for key, label in series:
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, label=label, linewidth=1.2)
                drawn = True
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(f"adaptiverl dynamics: {Path(output_dir).name}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
