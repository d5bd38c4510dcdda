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
