"""adaptiverl plot / compare: torn history lines, overlaid runs, the panels that mean something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptiverl.cli import main
from adaptiverl.trainer.plot import (
    final_reward,
    loss_is_meaningful,
    plot_runs,
    read_history,
    reward_components,
    smooth,
)

pytest.importorskip("matplotlib")


def fake_run(folder: Path, optim: str, *, mode: str = "rl", beta: float = 0.0, steps: int = 30,
             slope: float = 0.01) -> Path:
    """The files a finished run leaves: history rows, TRL's component logs, the resolved config."""
    folder.mkdir(parents=True)
    rows = [{"step": s, "loss": 0.5 / s, "reward": 0.2 + slope * s, "lr": 1e-3 * (1 + 0.01 * s),
             "scheduler_lr": 1e-3, "beta1": 0.9, "beta2": 0.999} for s in range(1, steps + 1)]
    (folder / "adaptive_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = [{"step": s, "reward": 0.3, "composite/length/mean": 0.1 * s, "composite/cosine/mean": 0.5,
             "rewards/composite/mean": 0.3} for s in range(10, steps + 1, 10)]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": logs}))
    (folder / "train_config.json").write_text(json.dumps({"OPTIM": optim, "MODE": mode, "BETA": beta}))
    return folder


def test_a_torn_last_line_is_skipped_with_a_warning_and_nothing_else_is_lost(tmp_path):
    run = fake_run(tmp_path / "run", "adamw", steps=5)
    with open(run / "adaptive_history.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss": 0.1, "rew')  # killed mid-write
    with pytest.warns(UserWarning, match=r"adaptive_history.jsonl:6: skipping a line"):
        rows = read_history(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    with pytest.warns(UserWarning, match="skipping"):
        assert main(["plot", str(run)]) == 0
    assert (run / "dynamics.png").stat().st_size > 10_000


def test_compare_overlays_runs_with_components_and_without_a_meaningless_loss(tmp_path):
    base = fake_run(tmp_path / "adamw", "torch.AdamW", slope=0.0)
    ours = fake_run(tmp_path / "online_adamw", "adamw", slope=0.02)
    assert reward_components(ours) == {"length": ([10, 20, 30], [1.0, 2.0, 3.0]),
                                       "cosine": ([10, 20, 30], [0.5, 0.5, 0.5])}
    assert not loss_is_meaningful(ours)  # GRPO, BETA 0: the loss is ~0 by construction
    assert loss_is_meaningful(fake_run(tmp_path / "sft", "adamw", mode="sft"))
    assert loss_is_meaningful(fake_run(tmp_path / "kl", "adamw", beta=0.04))

    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        captured["axes"] = [(ax.get_ylabel(), [line.get_label() for line in ax.get_lines()]) for ax in fig.axes]
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        png = plot_runs([base, ours], tmp_path / "compare.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert png.stat().st_size > 20_000
    panels = dict(captured["axes"])
    assert list(panels) == ["reward", "learning rate", "momentum / beta1", "beta2 / alpha"]
    assert "adamw (torch.AdamW): reward (10-step mean)" in panels["reward"]
    assert "online_adamw (adamw): length" in panels["reward"]
    assert "online_adamw (adamw): effective" in panels["learning rate"]
    assert panels["beta2 / alpha"] == ["adamw (torch.AdamW): beta2", "online_adamw (adamw): beta2"]
    assert final_reward(ours, last=5) == pytest.approx(0.2 + 0.02 * 28)


def test_compare_command(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a", "torch.AdamW"), fake_run(tmp_path / "b", "adamw")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.png"), "--labels", "base", "ours"]) == 0
    assert (tmp_path / "c.png").is_file()
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no adaptive_history.jsonl" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--labels", "one"]) == 2


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def capture_axes(monkeypatch) -> dict:
    """What each saved figure holds: per axis its label, lines, y-limits and legend anchor."""
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            legend = ax.get_legend()
            anchor = legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0 if legend else None
            captured[ax.get_ylabel()] = {"lines": [line.get_label() for line in ax.get_lines()],
                                         "styles": [line._unscaled_dash_pattern for line in ax.get_lines()],  # the dashes drawn
                                         "ylim": ax.get_ylim(), "legend_x": anchor}
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    return captured


def test_a_run_with_six_reward_components_plots_and_exits_0(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "six", "adamw")
    names = ["length", "cosine", "regex", "judge", "human", "learned"]
    logs = [{"step": s, **{f"composite/{n}/mean": 0.1 * k for k, n in enumerate(names)}} for s in (10, 20, 30)]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": logs}))
    panels = capture_axes(monkeypatch)
    assert main(["plot", str(run)]) == 0
    assert (run / "dynamics.png").stat().st_size > 10_000
    assert [f"six (adamw): {n}" in panels["reward"]["lines"] for n in names] == [True] * 6
    assert len(set(map(str, panels["reward"]["styles"][1:]))) == 6  # each component its own dashes
    # The legend sits beside the panel, not over the curves; a flat beta is not blown up into noise.
    assert all(p["legend_x"] > 1.0 for p in panels.values() if p["legend_x"] is not None)
    low, high = panels["beta2 / alpha"]["ylim"]
    assert high - low >= 0.02 and high <= 1.0 + 0.002


def test_a_plot_that_cannot_be_drawn_warns_and_never_raises(tmp_path):
    run = fake_run(tmp_path / "run", "adamw", steps=5)
    from adaptiverl.trainer.plot import plot_dynamics

    with pytest.warns(UserWarning, match="no .* drawn.*the run itself is fine"):
        (tmp_path / "a-file").write_text("")
        assert plot_dynamics(run, out_file=tmp_path / "a-file" / "x.png") is None  # cannot be written
    with pytest.warns(UserWarning, match="no adaptive_history.jsonl"):
        assert plot_dynamics(tmp_path / "not-a-run") is None


def test_a_plot_is_never_written_through_a_symlink(tmp_path):
    """compare.png a symlink to another file: the picture replaces the link, the target is untouched."""
    run = fake_run(tmp_path / "run", "adamw")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "compare.png"
    link.symlink_to(target)
    out = plot_runs([run], link)
    assert target.read_text() == "keep me"
    assert not out.is_symlink() and out.read_bytes().startswith(b"\x89PNG")


def test_eval_split_metrics_get_their_own_panel(tmp_path, monkeypatch):
    """eval_* rows of trainer_state.json (the eval split) are drawn, timings left out."""
    import adaptiverl.trainer.plot as plot

    run = fake_run(tmp_path / "run", "adamw")
    state = json.loads((run / "trainer_state.json").read_text())
    state["log_history"] += [{"step": s, "eval_loss": 2.0 / s, "eval_runtime": 1.5, "epoch": 1.0}
                             for s in (10, 20, 30)]
    (run / "trainer_state.json").write_text(json.dumps(state))
    assert plot.eval_metrics(run) == {"eval_loss": ([10, 20, 30], [0.2, 0.1, 2.0 / 30])}
    assert plot.eval_metrics(fake_run(tmp_path / "plain", "adamw")) == {}
    drawn = []
    real_draw = plot.plot_runs

    def spy(*args, **kwargs):
        import matplotlib.axes

        original = matplotlib.axes.Axes.set_ylabel
        monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                            lambda ax, text, *a, **k: (drawn.append((text, len(ax.lines))), original(ax, text, *a, **k))[1])
        return real_draw(*args, **kwargs)

    spy([run], tmp_path / "compare.png")
    assert ("eval split", 1) in drawn
