"""The benchmark harness: ``python -m benchmarks --quick`` end to end, and the runner's bookkeeping.

Harness checks only: outputs exist and hold the expected keys. No timing is asserted anywhere.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import benchmarks.__main__ as suite
from benchmarks import lr_robustness
from benchmarks.registry import BASELINE, get_methods

ROOT = Path(__file__).resolve().parent.parent


def test_registry_lists_every_competitor_and_names_missing_ones():
    methods, unavailable = get_methods()
    names = {m.name for m in methods}
    assert {"adamw_fused_cosine", "adamw_foreach_cosine", "adamw_plateau", "sgd_momentum",
            "schedulefree_adamw", "prodigy"} <= names
    # each of ours is either runnable or reported with a reason, never silently dropped
    for ours in ("online_adamw", "online_sgd", "online_rmsprop", "adaptive_optimizer",
                 "adaptive_scheduler", "meta_plateau", "meta_rl", "enhanced_sgd"):
        assert (ours in names) != (ours in unavailable)
    assert all(reason.startswith("not available") for reason in unavailable.values())
    with pytest.raises(ValueError, match="unknown method.*'adamw_typo'.*valid"):
        get_methods(["adamw_typo"])


def test_lr_robustness_normalises_to_the_tuned_baseline(tmp_path):
    data = lr_robustness.run(tmp_path, quick=True, methods=["sgd_momentum"], workers=1)
    for task, rows in data["per_task"].items():
        base = rows[BASELINE]
        # the baseline's best grid cell defines 1.00; nothing of the baseline is below it
        assert base["best"] == pytest.approx(1.0)
        assert min(base["normalised"]) == pytest.approx(1.0)
        sgd = rows["sgd_momentum"]
        assert sgd["grid_worst"] >= sgd["grid_median"] >= sgd["best"] > 0
        assert sgd["at_default"] == sgd["normalised"][data["grid_exponents"].index(0.0)]
        assert math.isfinite(data["baseline_loss"][task])
    assert {t["met"] for t in data["targets"]} <= {"yes", "NO", "n/a"}
    assert (tmp_path / "lr_robustness.md").read_text().count("| sgd_momentum |") >= 3
    assert (tmp_path / "lr_robustness_digits_mlp.png").stat().st_size > 0


def test_runner_reports_missing_and_failing_benchmarks(tmp_path, monkeypatch):
    broken = types.ModuleType("benchmarks.broken_for_test")

    def run(out_dir, quick=False):
        raise RuntimeError("boom")

    broken.run = run
    good = types.ModuleType("benchmarks.good_for_test")
    good.run = lambda out_dir, quick=False: {"targets": [
        {"target": "x <= 1", "value": 0.5, "threshold": 1, "met": "yes"},
        {"target": "y >= 2", "value": 1.5, "threshold": 2, "met": False}], "quick": quick}
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setattr(suite, "BENCHMARKS", (
        ("good_for_test", "works"), ("no_such_module_for_test", "absent"),
        ("broken_for_test", "raises")))
    assert suite.main(["--quick", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"]["good_for_test"]["status"] == "ok"
    assert results["status"]["no_such_module_for_test"]["status"] == "not available"
    assert results["status"]["broken_for_test"]["status"] == "failed"
    assert "RuntimeError: boom" in results["status"]["broken_for_test"]["detail"]
    assert results["results"]["good_for_test"]["quick"] is True
    report = (tmp_path / "report.md").read_text()
    assert "| good_for_test | x <= 1 | 0.500 | 1 | yes |" in report
    assert "| good_for_test | y >= 2 | 1.5 | 2 | NO |" in report
    assert "not available" in report and "failed" in report


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["status"]) == {name for name, _ in suite.BENCHMARKS}
    ran = {n for n, s in results["status"].items() if s["status"] == "ok"}
    assert {"lr_robustness", "grpo_reward", "grpo_reward_pretrained", "finetune_pretrained"} <= ran
    lr = results["results"]["lr_robustness"]
    assert {"per_task", "summary", "targets", "baseline_loss", "unavailable"} <= set(lr)
    assert set(lr["per_task"]) == {"tiny_gpt2_lm", "tiny_gpt2_lm_600", "digits_cnn", "digits_mlp",
                                   "noisy_regression"}
    assert set(lr["invariance"]["runs"]) == {"0.0001", "0.001", "0.01"}
    grpo = results["results"]["grpo_reward"]
    assert {"table", "reward_curves", "targets", "target_reward"} <= set(grpo)
    assert "adamw@1x" in grpo["reward_curves"] and not grpo["errors"]
    pre = results["results"]["grpo_reward_pretrained"]  # the same grid from a pre-trained policy
    assert pre["pretrain_steps"] > 0 and math.isfinite(pre["pretrain_loss"]) and not pre["errors"]
    assert {"adamw@1x", "adamw_cosine@1x", "schedulefree_adamw@1x", "adamw_kl_adaptive@1x", "online_adamw@1x",
            "online_adamw_trainer@1x"} <= set(pre["reward_curves"]) and grpo["pretrain_steps"] == 0
    report = (out / "report.md").read_text()
    assert "## Targets (reported, never asserted)" in report
    for name in ran:
        assert (out / f"{name}.json").exists() and (out / f"{name}.md").exists()
    assert (out / "grpo_reward_x1.png").exists() and (out / "finetune_pretrained.png").exists()
    assert all((out / f"lr_robustness_{t}.png").exists() for t in lr["per_task"])
    held = results["results"]["heldout_signal"]  # every suite task and the fine-tune from both lrs, both rows
    assert not held["errors"] and len(held["table"]) == 7 and len(held["targets"]) == 2
    assert {r["task"] for r in held["table"]} == set(lr["per_task"]) | {"finetune_pretrained"}


def test_heldout_signal_summary_pairs_seeds_and_judges_the_worst_cell():
    from benchmarks import heldout_signal as hs

    def rec(task, row, seed, final):
        return {"task": task, "row": row, "lr": 1e-3, "seed": seed, "final": final, "pooled_steps": 4 * seed,
                "steps": 300}

    records = [rec("a", "online_adamw", 0, 1.0), rec("a", "online_adamw_eval", 0, 0.8),
               rec("a", "online_adamw", 1, 1.0), rec("a", "online_adamw_eval", 1, 1.1),
               rec("b", "online_adamw", 0, 2.0), rec("b", "online_adamw_eval", 0, 2.0),
               rec("b", "online_adamw_eval", 1, 0.1),  # no unfed twin: not paired
               {"task": "b", "row": "online_adamw", "lr": 1e-3, "seed": 2, "error": "boom"}]
    table = {r["task"]: r for r in hs.summarise(records)}
    assert table["a"]["ratio"] == pytest.approx(0.95) and table["a"]["seeds ahead"] == 1
    assert table["a"]["pooled steps"] == 2 and table["b"]["seeds"] == 1 and table["b"]["ratio"] == 1.0
    worst, geo = hs.targets(list(table.values()))
    assert worst["value"] == 1.0 and worst["met"] and "(b at 0.001)" in worst["target"]
    assert geo["value"] == pytest.approx(math.sqrt(0.95)) and geo["met"]
    fit, val = hs._split(100, 0.2)
    assert len(val) == 20 and sorted(fit.tolist() + val.tolist()) == list(range(100))
    assert torch.equal(hs._split(100, 0.2)[1], val)  # fixed, not the run's seed
