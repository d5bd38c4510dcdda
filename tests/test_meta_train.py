"""scripts/meta_train.py: deterministic from its seed, disjoint task family, loadable output."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from adaptiverl.optim.online import FEATURE_NAMES, OnlineAdamW

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("meta_train", ROOT / "scripts" / "meta_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["meta_train"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mt():
    return _module()


def test_every_task_kind_builds_trains_and_evaluates(mt):
    for kind in mt.TASK_KINDS:
        spec = mt.RunSpec(kind, "adamw", 1e-3, 5, seed=3)
        out = mt.run_spec(spec, None)
        assert math.isfinite(out["score"]), kind


def test_task_family_is_disjoint_from_the_benchmarks(mt):
    from benchmarks.tasks import get_tasks

    benchmark = set(get_tasks(quick=True))
    assert not benchmark & set(mt.TASK_KINDS)
    source = (ROOT / "scripts" / "meta_train.py").read_text()
    for needle in ("load_digits", "python_corpus", "GPT2", "benchmarks."):
        assert needle not in source, needle


def test_meta_training_is_deterministic_from_its_seed_and_writes_loadable_weights(mt, tmp_path):
    kwargs = {"seed": 5, "iterations": 2, "pairs": 1, "eval_runs": 1, "eval_every": 1, "workers": 1,
              "horizons": (8,), "log": lambda *_: None}
    first = mt.meta_train(**kwargs)
    second = mt.meta_train(**kwargs)
    for key in ("weights", "final_weights"):  # the shipped (best) iterate and the last one
        assert first[key].keys() == second[key].keys()
        assert all(torch.equal(first[key][k], second[key][k]) for k in first[key])
    assert [c["eval_score"] for c in first["curve"]] == [c["eval_score"] for c in second["curve"]]
    other = mt.meta_train(**{**kwargs, "seed": 6})
    assert not torch.equal(first["final_weights"]["head.weight"], other["final_weights"]["head.weight"])
    path = mt.write_outputs(first, tmp_path)
    assert path.stat().st_size < 100 * 1024
    assert (tmp_path / "meta_training.json").is_file()
    opt = OnlineAdamW([torch.nn.Parameter(torch.ones(2))], controller="fresh")
    meta = opt.controller.load_pretrained(path)
    assert meta["feature_names"] == list(FEATURE_NAMES) and meta["iterations"] == 2
    assert torch.equal(opt.controller.head.weight, first["weights"]["head.weight"])
