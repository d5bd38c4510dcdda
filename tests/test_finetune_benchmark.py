"""The pretrained fine-tune benchmark's pieces: the docstring task, the model, the rows' summary."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import finetune_pretrained as ft

SMALL = ("email", "http")  # quick standard-library packages for the harness check, not the benchmark's


def test_docstring_paragraphs_are_deterministic_and_clean():
    first, again = ft.docstring_paragraphs("email"), ft.docstring_paragraphs("email")
    assert first == again and len(first) > 50
    assert len(set(first)) == len(first)
    assert all(60 <= len(p) <= 600 and "\n" not in p and "  " not in p for p in first)
    with pytest.raises(ImportError, match="'no_such_package_xyz' is not installed"):
        ft.docstring_paragraphs("no_such_package_xyz")


def test_data_splits_are_balanced_disjoint_and_fixed():
    data = ft.build_data(SMALL, train_per_class=6, eval_per_class=3)
    assert data["train_labels"].tolist() == [0] * 6 + [1] * 6
    assert data["eval_labels"].tolist() == [0] * 3 + [1] * 3
    train_rows = {tuple(r) for r in data["train_ids"].tolist()}
    assert not train_rows & {tuple(r) for r in data["eval_ids"].tolist()}
    assert torch.equal(data["train_ids"], ft.build_data(SMALL, 6, 3)["train_ids"])
    with pytest.raises(ValueError, match="'email' has .* paragraphs, 100001 needed"):
        ft.build_data(SMALL, train_per_class=100_000, eval_per_class=1)


def test_a_quick_finetune_trains_the_pretrained_encoder_and_reports_accuracy():
    task = ft.make_task(ft.build_data(SMALL, 16, 4), steps=2)
    result = ft.train(task, ft.METHODS["adamw_linear"], 1e-4, seed=0)
    assert len(result.losses) == 2 and math.isfinite(result.final_eval_loss)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    model = task.build_model(0)
    assert sum(p.numel() for p in model.parameters()) > 20_000_000  # the real MiniLM, not a toy


def test_summary_normalises_to_the_best_adamw_cell():
    records = [{"method": "adamw_linear", "lr": lr, "seed": 0, "final": loss, "accuracy": 0.5, "lrs": [lr],
                "sec_per_step": 1.0} for lr, loss in ((1e-4, 0.8), (3e-4, 0.4))]
    records.append({"method": "online_adamw", "lr": 1e-3, "seed": 0, "final": 0.6, "accuracy": 0.7,
                    "lrs": [1e-3], "sec_per_step": 1.0})
    rows, tuned = ft.summarise(records)
    assert tuned == 0.4
    assert {r["method"]: r["vs tuned AdamW"] for r in rows if r["lr"] == 1e-3} == {"online_adamw": pytest.approx(1.5)}


def test_the_development_tasks_share_nothing_with_the_benchmarks():
    """Constants are chosen in scripts/rl_dev.py: other libraries, other prompts, other rewards."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("rl_dev", root / "scripts" / "rl_dev.py")
    rl_dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_dev)
    assert not set(rl_dev.DEV_FT_LIBRARIES) & set(ft.LIBRARIES)
    # the dev LM reads third-party docstrings; the benchmark LMs read the standard library's
    # (adaptiverl.tiny.CORPUS_MODULES), the fine-tune benchmark its LIBRARIES
    from adaptiverl.tiny import CORPUS_MODULES

    assert not set(rl_dev.DEV_LM_LIBRARIES) & (set(ft.LIBRARIES) | set(CORPUS_MODULES) | sys.stdlib_module_names)
    quickstart = json.loads((root / "configs" / "quickstart.json").read_text())["REWARDS"]
    for name, task in rl_dev.GRPO_TASKS.items():
        assert not set(task["libraries"]) & sys.stdlib_module_names, name  # quickstart's prompts are stdlib's
        assert not set(task["libraries"]) & set(ft.LIBRARIES), name
        # grpo_cosine keeps the benchmark's cosine-to-reference term by design (its references are other text)
        assert not [r for r in task["rewards"] if r in quickstart and r["type"] != "cosine"], name


def test_the_supervised_development_tasks_are_their_own_data_and_learnable():
    """glyphs_* and noisyreg (scripts/rl_dev.py) generate their data from the run's seed (no digits, no
    docstrings), the same for the same seed, and a short tuned-AdamW run learns each of them."""
    import importlib.util
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("rl_dev", root / "scripts" / "rl_dev.py")
    rl_dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_dev)
    xt, yt, xe, ye = rl_dev._glyphs(0)
    assert xt.shape == (1440, 64) and xe.shape == (360, 64) and set(ye.tolist()) == set(range(10))
    assert torch.equal(rl_dev._glyphs(0)[0], xt) and not torch.equal(rl_dev._glyphs(1)[0], xt)
    assert rl_dev._noisy_teacher(0)[1].shape == (1024, 1)
    for task, chance in (("glyphs_mlp", 2.30), ("glyphs_cnn", 2.30), ("noisyreg", None)):
        out = rl_dev.supervised_run(("adamw_cosine", 1e-2, task, 40, 0))
        if chance is not None:
            assert out["eval_loss"] < 0.8 * chance, (task, out)
        else:  # the held-out MSE against the clean teacher falls below the teacher's own variance
            teacher = rl_dev._noisy_teacher(0)[3]
            assert out["eval_loss"] < 0.8 * float(teacher.var()), (task, out)


def test_pretrain_reads_the_texts_it_is_given(tiny_gpt2_dir, tmp_path):
    """adaptiverl.tiny.pretrain(texts=...): the dev GRPO tasks pre-train their policy on other
    libraries' docstrings than any benchmark's; the model learns exactly those texts."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptiverl.tiny import pretrain

    folder = shutil.copytree(tiny_gpt2_dir, tmp_path / "tiny")
    text = "alpha beta gamma delta epsilon zeta eta theta " * 40
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(tokenizer(text)["input_ids"][:64])[None]

    def loss() -> float:
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            return float(model(input_ids=ids, labels=ids).loss)

    before = loss()
    pretrain(folder, 30, texts=[text] * 8, block=32, batch=4)
    assert loss() < 0.5 * before


def test_the_validation_gated_pooling_variant_pools_only_after_a_worse_validation_loss():
    """rl_dev's ``online_val_valgate{l}`` (a development variant) holds out part of the training data,
    pools the rows' levels (ROW_POOLING) only on steps after a validation reading above the best so
    far, and leaves the module switch off when it is done; ``_shrink{l}`` pools on every step."""
    import importlib.util
    from pathlib import Path

    from adaptiverl.controllers import online

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("rl_dev", root / "scripts" / "rl_dev.py")
    rl_dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_dev)
    always = rl_dev.supervised_run(("online_val_shrink0.02", 1e-2, "noisyreg", 100, 0))
    assert online.ROW_POOLING == ("shrink", 0.02)  # a rules variant sets the switch for the runs after it
    gated = rl_dev.supervised_run(("online_val_valgate0.02", 1e-2, "noisyreg", 100, 0))
    assert online.ROW_POOLING is None
    plain = rl_dev.supervised_run(("online_val", 1e-2, "noisyreg", 100, 0))
    assert 0 < gated["pooled_steps"] < 100 and plain["pooled_steps"] == 0 and always["pooled_steps"] == 100
    assert gated["eval_loss"] != plain["eval_loss"] != always["eval_loss"]
