"""train(config): checkpoints and exact resume, LoRA, RLOO, the shortened quickstart, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptiverl.trainer.config import ConfigError, load_config, parse_config
from adaptiverl.trainer.run import train

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "configs" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # train() sets CPU_THREADS=1 below


def sft_config(model_dir, out_dir, **overrides):
    raw = {"MODEL": model_dir, "TRAIN_FILE": str(DATA / "sft_text.jsonl"), "OUTPUT_DIR": str(out_dir),
           "MODE": "sft", "OPTIM": "adamw", "LRATE": 1e-3, "LR_SCHEDULER": "linear", "BATCH_SIZE": 4,
           "MAXSEQ": 48, "STEPS": 6, "LOGGING_STEPS": 2, "SEED": 3, "CPU_THREADS": 1, "PLOT": False}
    raw.update(overrides)
    return parse_config(raw)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_same_state(a, b, where="state"):
    """Recursive exact equality of nested dicts/lists/tensors/scalars."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


def test_resume_reproduces_an_uninterrupted_run(tiny_gpt2_dir, tmp_path):
    full = train(sft_config(tiny_gpt2_dir, tmp_path / "full", SAVE_STEPS=3))
    checkpoint = tmp_path / "full" / "checkpoint-3"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                 "trainer_state.json", "train_config.json", "adaptive_history.jsonl"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "train_config.json").read_text())["SAVE_STEPS"] == 3
    assert "online" in torch.load(checkpoint / "optimizer.pt", weights_only=True)  # controller state

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-3")
    # A crash during the save at step 5 left a newer folder without trainer_state.json and config.
    torn = resumed_dir / "checkpoint-5"
    shutil.copytree(checkpoint, torn)
    (torn / "trainer_state.json").unlink()
    (torn / "train_config.json").unlink()
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint .*checkpoint-5 \(no trainer_state.json"):
        resumed = train(sft_config(tiny_gpt2_dir, resumed_dir, SAVE_STEPS=3, RESUME=True))
    assert resumed.global_step == full.global_step == 6
    a, b = params(full.trainer.model), params(resumed.trainer.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # The controller (GRU weights, its Adam state, scales, signal statistics, generator) too.
    assert_same_state(full.trainer.optimizer.optimizer.state_dict()["online"],
                      resumed.trainer.optimizer.optimizer.state_dict()["online"])
    # The resumed run's history continues the first three steps instead of starting over.
    history = (resumed_dir / "adaptive_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.filterwarnings("ignore:AdaptiveCallback found nothing to adapt")
def test_torch_adamw_without_rules_is_plain_adamw(tiny_gpt2_dir, tmp_path):
    """OPTIM torch.AdamW with no rule: the same parameters as torch AdamW given to the Trainer."""
    from transformers import set_seed

    from adaptiverl.trainer.run import build_trainer, load_dataset_for, load_model_and_tokenizer
    from adaptiverl.trainer.trainers import decay_parameter_groups

    c = sft_config(tiny_gpt2_dir, tmp_path / "ours", OPTIM="torch.AdamW", STEPS=3, LRATE=1e-2,
                   WEIGHT_DECAY=0.1)
    ours = train(c)
    assert ours.trainer.optimizer.optimizer.rules == {}
    assert all(row["lr"] == row["scheduler_lr"] or row["step"] == 3 for row in ours.history)

    reference = sft_config(tiny_gpt2_dir, tmp_path / "torch", OPTIM="torch.AdamW", STEPS=3,
                           LRATE=1e-2, WEIGHT_DECAY=0.1)
    set_seed(reference.SEED)
    model, tokenizer = load_model_and_tokenizer(reference)
    plain = torch.optim.AdamW(decay_parameter_groups(model, 0.1), lr=1e-2)
    trainer = build_trainer(reference, model, tokenizer, load_dataset_for(reference, tokenizer), plain)
    trainer.train()
    a, b = params(ours.trainer.model), params(trainer.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(("optim", "cls"), [
    ("sgd", "OnlineSGD"), ("rmsprop", "OnlineRMSProp"), ("adamw", "OnlineAdamW"),
    ("enhanced_sgd", "EnhancedSGD"), ("adagrad", "AdaptiveOptimizer"),
    ("torch.AdamW", "AdaptiveOptimizer"),
])
def test_every_optim_value_builds_its_optimizer_and_is_fed(tiny_gpt2_dir, tmp_path, optim, cls):
    result = train(sft_config(tiny_gpt2_dir, tmp_path, OPTIM=optim, LRATE=0.01, STEPS=2,
                              LR_SCHEDULER="constant"))
    optimizer = result.trainer.optimizer.optimizer
    assert type(optimizer).__name__ == cls
    assert [row["step"] for row in result.history] == [1, 2]
    assert all(row["loss"] > 0 and row["lr"] > 0 for row in result.history)
    assert json.loads((tmp_path / "train_config.json").read_text())["OPTIM"] == \
        ("Adagrad" if optim == "adagrad" else optim)
    if optim == "torch.AdamW":
        assert type(optimizer.optimizer).__name__ == "AdamW"


def test_optim_args_errors_name_the_key(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ConfigError, match="'OPTIM_ARGS'.*adamw.*no_such_knob"):
        train(sft_config(tiny_gpt2_dir, tmp_path, OPTIM_ARGS={"no_such_knob": 1}))


def test_resume_without_checkpoint_names_the_folder(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ConfigError, match="RESUME.*no checkpoint"):
        train(sft_config(tiny_gpt2_dir, tmp_path / "empty", RESUME=True))


def test_lora_trains_adapters_only(tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(sft_config(tiny_gpt2_dir, tmp_path, FULLTUNE=False, STEPS=2, OPTIM="sgd", LRATE=0.1))
    model = result.trainer.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} >= {"c_attn", "c_fc", "c_proj"}
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    torch.testing.assert_close(model.get_base_model().transformer.h[0].attn.c_attn.base_layer.weight,
                               base.transformer.h[0].attn.c_attn.weight)
    assert (tmp_path / "adapter_config.json").is_file()
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_lora_target_that_does_not_exist(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ConfigError, match="LORA_TARGET_MODULES.*q_proj"):
        train(sft_config(tiny_gpt2_dir, tmp_path, FULLTUNE=False, LORA_TARGET_MODULES=["q_proj"]))


def test_train_file_without_the_modes_column(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("question\nwhat\n")
    with pytest.raises(ConfigError, match=r"needs a 'text' column.*\['question'\]"):
        train(sft_config(tiny_gpt2_dir, tmp_path, TRAIN_FILE=str(data)))


def test_rloo_with_a_torch_optimizer_wrapped(tiny_gpt2_dir, tmp_path):
    c = parse_config({"MODEL": tiny_gpt2_dir, "TRAIN_FILE": str(DATA / "quickstart_prompts.jsonl"),
                      "OUTPUT_DIR": str(tmp_path), "MODE": "rloo", "OPTIM": "Adagrad", "LRATE": 0.01,
                      "BATCH_SIZE": 4, "NUM_GENERATIONS": 2, "MAX_COMPLETION_LENGTH": 6, "MAXSEQ": 32,
                      "STEPS": 2, "LOGGING_STEPS": 1, "CPU_THREADS": 1,
                      "REWARDS": [{"type": "length", "target": 20}]})
    result = train(c)
    from trl import RLOOTrainer

    assert isinstance(result.trainer, RLOOTrainer)  # adaptiverl's AdaptiveRLOOTrainer subclass
    assert type(result.trainer.optimizer.optimizer).__name__ == "AdaptiveOptimizer"
    assert [("reward" in r, "loss" in r) for r in result.history] == [(True, True), (True, True)]
    assert result.trainer.optimizer.optimizer.signals.reward.count == 2
    card = (tmp_path / "README.md").read_text()  # the model card names what was trained, and how
    assert f"`{tiny_gpt2_dir}`" in card and "[None]" not in card
    assert "AdaptiveOptimizer(Adagrad)" in card and "OPTIM `Adagrad`" in card
    assert "`length` (weight 1.0): target=20" in card


@pytest.mark.slow
def test_quickstart_shortened(tiny_gpt2_dir, tmp_path, capsys):
    """configs/quickstart.json as shipped, only shorter and on the fixture's (untrained) tiny GPT-2."""
    pytest.importorskip("tensorboard")
    c = load_config(ROOT / "configs" / "quickstart.json")
    c.MODEL, c.OUTPUT_DIR, c.STEPS, c.SAVE_STEPS, c.LOGGING_STEPS = tiny_gpt2_dir, str(tmp_path), 4, 2, 2
    result = train(c)
    assert result.global_step == 4
    assert json.loads((tmp_path / "train_config.json").read_text())["OPTIM"] == "adamw"
    assert (tmp_path / "checkpoint-2" / "optimizer.pt").is_file()
    assert (tmp_path / "checkpoint-4" / "train_config.json").is_file()
    assert list(tmp_path.glob("runs/**/events.out.tfevents.*"))
    assert result.plot == tmp_path / "dynamics.png" and result.plot.stat().st_size > 10_000
    rewards = [r["reward"] for r in result.history]
    assert len(rewards) == 4 and all(-1.0 <= r <= 2.0 for r in rewards)
    optimizer = result.trainer.optimizer.optimizer
    assert type(optimizer).__name__ == "OnlineAdamW" and optimizer.signals.reward.count == 4
    out = capsys.readouterr().out
    assert "Step 2 | Reward: " in out and "| LR: " in out and "| Momentum: " in out
    logged = [row for row in result.trainer.state.log_history if "reward" in row]
    assert {"composite/cosine/mean", "composite/regex/mean", "composite/length/mean",
            "adaptive/lr", "adaptive/reward_trend"} <= set(logged[-1])

    from adaptiverl.cli import main

    (tmp_path / "dynamics.png").unlink()
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "dynamics.png").is_file()


def test_cli_reports_config_errors(tmp_path, capsys):
    from adaptiverl.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"MODEL": "gpt2", "TRAIN_FILE": str(DATA / "sft_text.jsonl"),
                               "MODE": "sft", "LRATEE": "1e-3"}))
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'LRATEE'" in err and "Did you mean 'LRATE'?" in err
    assert main(["plot", str(tmp_path)]) == 2
    assert "adaptive_history.jsonl" in capsys.readouterr().err


# ---- everything is checked before the model loads, and nothing is written before ---------

@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fails the test if train() gets as far as loading weights."""
    import adaptiverl.trainer.run as run

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was named")

    monkeypatch.setattr(run, "load_model_and_tokenizer", refuse)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"OPTIM_ARGS": {"betas": [0.9, 1.5]}}, "'OPTIM_ARGS'.*beta"),
    ({"OPTIM_ARGS": {"lr": -1}}, "'OPTIM_ARGS'.*lr"),
    ({"OPTIM_ARGS": {"no_such_knob": 1}}, "'OPTIM_ARGS'.*no_such_knob"),
    ({"OPTIM": "torch.AdamW", "ADAPTIVE_ARGS": {"lr_rule": "sideways"}}, "'ADAPTIVE_ARGS'"),
    ({"OPTIM": "torch.AdamW", "ADAPTIVE_ARGS": {"no_such_arg": 1}}, "'ADAPTIVE_ARGS'.*no_such_arg"),
    ({"FULLTUNE": False, "LORA_TARGET_MODULES": ["q_proj"]}, "LORA_TARGET_MODULES.*q_proj"),
    ({"RESUME": True}, "'RESUME' = true: no checkpoint-\\* folder"),
    ({"MODEL": "./models/no-such-tiny-gpt2"}, "'MODEL'.*no such model folder.*adaptiverl build-tiny"),
    ({"MODEL": "no-such-org/no-such-model"}, "'MODEL'.*HF_HUB_OFFLINE"),
    ({"TRAINER_ARGS": {"load_best_model_at_end": True}, "SAVE_STEPS": 2}, "TRAINER_ARGS.load_best_model_at_end: SFTConfig rejected"),
    ({"TRAINER_ARGS": {"eval_strategy": "steps"}}, "'eval_strategy' = 'steps': there is no eval data"),
])
def test_bad_input_is_named_before_the_model_loads_and_nothing_is_written(
        tiny_gpt2_dir, tmp_path, no_model_loads, overrides, fragment):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=fragment):
        train(sft_config(tiny_gpt2_dir, out, **overrides))
    assert not (out / "train_config.json").exists()


def test_train_file_without_a_prompt_column_is_named_before_the_model_loads(
        tiny_gpt2_dir, tmp_path, no_model_loads):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "what"}) + "\n")
    with pytest.raises(ConfigError, match=r"'TRAIN_FILE'.*needs a 'prompt' column.*\['question'\]"):
        train(parse_config({"MODEL": tiny_gpt2_dir, "TRAIN_FILE": str(data), "OUTPUT_DIR": str(tmp_path),
                            "REWARDS": [{"type": "length", "target": 5}]}))


def test_only_incomplete_checkpoints_is_an_error_naming_them(tiny_gpt2_dir, tmp_path, no_model_loads):
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.warns(UserWarning, match="checkpoint-4 \\(no model weights"), \
            pytest.raises(ConfigError, match="only incomplete ones \\(checkpoint-4\\)"):
        train(sft_config(tiny_gpt2_dir, tmp_path, RESUME=True))


def test_train_py_takes_command_line_overrides(tiny_gpt2_dir, tmp_path):
    """``python train.py CONFIG --max_steps 2 ...``: the flags win over the file, in the resolved config."""
    import subprocess
    import sys

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"MODEL": tiny_gpt2_dir, "TRAIN_FILE": str(DATA / "sft_text.jsonl"),
                                  "MODE": "sft", "STEPS": 50, "LRATE": "1e-3", "MAXSEQ": 32,
                                  "CPU_THREADS": 1, "PLOT": "false", "OUTPUT_DIR": str(tmp_path / "x")}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config), "--max_steps", "2",
                           "--output_dir", str(out), "--learning_rate", "5e-3", "--logging_steps", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads((out / "train_config.json").read_text())
    assert (resolved["STEPS"], resolved["LRATE"], resolved["LOGGING_STEPS"]) == (2, 5e-3, 1)
    assert "FutureWarning" not in proc.stderr
    assert "adaptive_history.jsonl ->" in proc.stdout and "dynamics.png" not in proc.stdout  # PLOT false
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config), "--max_step", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("train.py: command line: unknown argument '--max_step'")
