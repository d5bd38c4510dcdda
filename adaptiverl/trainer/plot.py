"""Runs as PNGs: one run's dynamics, or several runs overlaid (baseline versus adaptive).

Reads the per-step history ``AdaptiveCallback`` writes (``OUTPUT_DIR/adaptive_history.jsonl``),
the per-component rewards TRL logs (``trainer_state.json``) and the run's resolved config
(``train_config.json``). ``adaptiverl plot OUTPUT_DIR`` calls :func:`plot_dynamics` on a
finished (or running) job; ``adaptiverl compare RUN_A RUN_B ...`` calls :func:`plot_runs`.

Panels, each on its own axis: the batch reward (smoothed, with each reward component's mean
dashed or dotted), the loss where it means something (left out for GRPO/RLOO with ``BETA`` 0, whose loss
is about 0 by construction), the metrics of the evaluations on the eval split (``eval_loss``,
``eval_reward``, ... from ``trainer_state.json``, where the run evaluated), the effective learning rate (after the controller's multipliers;
the scheduler's dotted), momentum or ``beta1``, and ``beta2`` or RMSprop's ``alpha``.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import warnings
from pathlib import Path

from adaptiverl._files import write_bytes
from adaptiverl.trainer.callback import HISTORY_FILE, read_jsonl

PLOT_FILE = "dynamics.png"
COMPARE_FILE = "compare.png"
STATE_FILE = "trainer_state.json"
RUN_CONFIG_FILE = "train_config.json"
COMPONENT_PREFIXES = ("composite/", "rewards/")
EVAL_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")
# One line style per component, in the run's colour (passed as ``linestyle=``: a dash tuple is no
# format string). A run with more components reuses them in turn.
COMPONENT_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
# The beta panels show at least this span: a 0.0007 wobble of beta2 must not fill the panel.
BETA_MIN_SPAN = 0.02


def read_history(output_dir: str | Path) -> list[dict[str, float]]:
    path = Path(output_dir) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {HISTORY_FILE} in {Path(output_dir).resolve()}: "
                                "is it the OUTPUT_DIR of a run trained with AdaptiveCallback?")
    rows = [r for r in read_jsonl(path) if isinstance(r.get("step"), int | float)]
    if not rows:
        raise ValueError(f"{path} holds no steps yet")
    return rows


def _log_history(output_dir: str | Path, what: str) -> list[dict]:
    """The trainer's ``log_history`` rows (``trainer_state.json``); none, with a warning naming
    ``what`` is left out, when the file is not readable JSON."""
    path = Path(output_dir) / STATE_FILE
    if not path.is_file():
        return []
    try:
        logs = json.loads(path.read_text()).get("log_history", [])
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        warnings.warn(f"{path}: not readable JSON; {what} left out", UserWarning, stacklevel=3)
        return []
    return [row for row in logs if isinstance(row, dict) and "step" in row]


def reward_components(output_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{component: (steps, means)}`` from the trainer's log history (TRL's logging steps)."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    for row in _log_history(output_dir, "reward components"):
        for key, value in row.items():
            if key.startswith(COMPONENT_PREFIXES) and key.endswith("/mean"):
                name = key.split("/")[1]
                if name == "composite" and key.startswith("rewards/"):
                    continue  # TRL's record of the composite itself: the batch reward, drawn solid
                steps, values = found.setdefault(name, ([], []))
                steps.append(row["step"])
                values.append(value)
    return found


def eval_metrics(output_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{metric: (steps, values)}`` of the evaluations on the eval split (``eval_loss``,
    ``eval_reward``, ...; timings left out), from the trainer's log history."""
    found: dict[str, tuple[list[float], list[float]]] = {}
    for row in _log_history(output_dir, "eval metrics"):
        for key, value in row.items():
            if (key.startswith("eval_") and not key.endswith(EVAL_TIMINGS) and isinstance(value, int | float)
                    and math.isfinite(value)):
                steps, values = found.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(value)
    return found


def loss_is_meaningful(output_dir: str | Path) -> bool:
    """False for GRPO/RLOO with ``BETA`` 0: the clipped surrogate with zero-mean advantages is ~0."""
    path = Path(output_dir) / RUN_CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True
    return config.get("MODE") == "sft" or float(config.get("BETA", 0.0)) > 0


def smooth(values: list[float], width: int) -> list[float]:
    """Trailing moving average over ``width`` points (shorter at the start)."""
    return [statistics.fmean(values[max(0, i - width + 1):i + 1]) for i in range(len(values))]


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run_label(output_dir: str | Path) -> str:
    """The run's folder name and its optimizer, e.g. ``adamw (torch.AdamW)``."""
    path = Path(output_dir)
    try:
        optim = json.loads((path / RUN_CONFIG_FILE).read_text()).get("OPTIM")
    except (OSError, json.JSONDecodeError):
        optim = None
    return f"{path.name} ({optim})" if optim else path.name


def _at_least_span(ax, span: float) -> None:
    """Widen the y-axis of ``ax`` to ``span`` around its data (kept at or below 1 where the data
    are), without an offset in the tick labels, so that noise does not look like adaptation."""
    values = [y for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(y)]
    if not values:
        return
    low, high = min(values), max(values)
    if high - low < span:
        middle = (low + high) / 2
        low, high = middle - span / 2, middle + span / 2
        if high > 1.0 >= max(values):
            low, high = low - (high - 1.0), 1.0
        ax.set_ylim(low - 0.05 * span, high + 0.05 * span)
    ax.ticklabel_format(axis="y", useOffset=False)


def plot_runs(run_dirs: list[str | Path], out_file: str | Path, labels: list[str] | None = None,
              smooth_width: int = 10, title: str | None = None) -> Path:
    """Overlay the runs in one PNG (see the module docstring for the panels); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("plot_runs needs at least one run folder")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [(Path(d), read_history(d)) for d in run_dirs]
    labels = labels or [run_label(d) for d, _ in runs]
    with_loss = any(loss_is_meaningful(d) for d, _ in runs)
    evals = [eval_metrics(d) for d, _ in runs]
    panels = ["reward", *(["loss"] if with_loss else []), *(["eval"] if any(evals) else []), "lr", "beta1", "beta2"]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.6 * len(panels)), sharex=True)
    axes = dict(zip(panels, axes, strict=True))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = dict.fromkeys(panels, False)
    for index, ((folder, rows), label, evaluated) in enumerate(zip(runs, labels, evals, strict=True)):
        color = colors[index % len(colors)]

        def draw(panel: str, steps, values, *, style="-", name=label, width=1.4, color=color, **kw):
            if not steps:
                return
            try:
                axes[panel].plot(steps, values, color=color, label=name, linewidth=width, linestyle=style, **kw)
            except Exception as exc:  # draw the rest: a plot must never fail a run
                warnings.warn(f"plot: {name!r} left out of {out_file}: {exc}", UserWarning, stacklevel=2)
            else:
                drawn[panel] = True

        steps, rewards = _series(rows, "reward")
        draw("reward", steps, smooth(rewards, smooth_width) if rewards else [],
             name=f"{label}: reward ({smooth_width}-step mean)")
        for number, (part, (c_steps, c_values)) in enumerate(reward_components(folder).items()):
            draw("reward", c_steps, c_values, style=COMPONENT_STYLES[number % len(COMPONENT_STYLES)],
                 name=f"{label}: {part}", width=0.9, alpha=0.8)
        if with_loss and loss_is_meaningful(folder):
            steps, losses = _series(rows, "loss")
            draw("loss", steps, smooth(losses, smooth_width) if losses else [])
        for number, (metric, (e_steps, e_values)) in enumerate(evaluated.items()):
            draw("eval", e_steps, e_values, style=COMPONENT_STYLES[number % len(COMPONENT_STYLES)],
                 name=f"{label}: {metric}", marker="o", markersize=3)
        draw("lr", *_series(rows, "lr"), name=f"{label}: effective")
        draw("lr", *_series(rows, "scheduler_lr"), style=":", name=f"{label}: scheduler", width=1.0)
        momentum = "momentum" if _series(rows, "momentum")[0] else "beta1"
        draw("beta1", *_series(rows, momentum), name=f"{label}: {momentum}")
        second = "beta2" if _series(rows, "beta2")[0] else "alpha"
        draw("beta2", *_series(rows, second), name=f"{label}: {second}")
    titles = {"reward": "reward", "loss": "loss (smoothed)", "eval": "eval split", "lr": "learning rate",
              "beta1": "momentum / beta1", "beta2": "beta2 / alpha"}
    for panel, ax in axes.items():
        ax.set_ylabel(titles[panel])
        ax.grid(alpha=0.3)
        if drawn[panel]:
            # Beside the panel, not over the curves.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0.0)
            if panel == "lr":
                ax.set_yscale("log")
            elif panel in ("beta1", "beta2"):
                _at_least_span(ax, BETA_MIN_SPAN)
        else:
            ax.text(0.5, 0.5, "not recorded in these runs", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    axes[panels[-1]].set_xlabel("optimizer step")
    fig.suptitle(title or "adaptiverl: " + " vs ".join(labels))
    fig.tight_layout()
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(out, buffer.getvalue())  # never through a symlink, never half-written
    return out


def plot_dynamics(output_dir: str | Path, out_file: str | Path | None = None) -> Path | None:
    """One run's panels (:func:`plot_runs` of that run) as ``OUTPUT_DIR/dynamics.png`` or ``out_file``.

    Never fails the run it draws: whatever goes wrong (no history, a file it cannot write, a
    series matplotlib refuses) is a warning naming it, and the result ``None`` when no PNG came.
    """
    out = Path(out_file) if out_file is not None else Path(output_dir) / PLOT_FILE
    try:
        return plot_runs([output_dir], out, title=f"adaptiverl dynamics: {Path(output_dir).name}")
    except Exception as exc:
        warnings.warn(f"plot: no {out} drawn ({type(exc).__name__}: {exc}); the run itself is fine",
                      UserWarning, stacklevel=2)
        return None


def final_reward(output_dir: str | Path, last: int = 20) -> float | None:
    """Mean batch reward over the last ``last`` steps of a run (None without rewards)."""
    rewards = _series(read_history(output_dir), "reward")[1]
    return statistics.fmean(rewards[-last:]) if rewards else None
