"""OUTPUT_DIR and resuming: no writes through symlinks, no secrets on disk, no run replaced or
over-trained unasked, torn or mismatched checkpoints named, GRPO resumed bit for bit."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import types
from pathlib import Path

import pytest
import torch

from adaptiverl.trainer import run
from adaptiverl.trainer.config import ConfigError, parse_config
from adaptiverl.trainer.run import train

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "configs" / "data"
SECRET = "hf_NotARealTokenButSecret123"


def sft_config(model_dir, out_dir, **overrides):
    raw = {"MODEL": model_dir, "TRAIN_FILE": str(DATA / "sft_text.jsonl"), "OUTPUT_DIR": str(out_dir),
           "MODE": "sft", "OPTIM": "adamw", "LRATE": 1e-3, "BATCH_SIZE": 4, "MAXSEQ": 32, "STEPS": 3,
           "SAVE_STEPS": 2, "LOGGING_STEPS": 1, "SEED": 3, "CPU_THREADS": 1, "PLOT": False}
    raw.update(overrides)
    return parse_config(raw)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def finished_run(tiny_gpt2_dir, tmp_path_factory) -> Path:
    """A finished 3-step SFT run with checkpoint-2 and checkpoint-3, a hub_token in its arguments."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(sft_config(tiny_gpt2_dir, out, TRAINER_ARGS={"hub_token": SECRET}))
    return out


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# ---- the one writer: whole files replaced, appends refused through a symlink -----------------

def test_whole_file_writes_replace_a_symlink_and_leave_its_target(tmp_path):
    from adaptiverl._files import append_text, write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    write_text(link, "new\n")
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "new\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind

    history = tmp_path / "history.jsonl"
    history.symlink_to(victim)
    with pytest.raises(OSError, match="history.jsonl is a symlink"):
        append_text(history, "row\n")
    assert victim.read_text() == "precious\n"
    append_text(tmp_path / "fresh.jsonl", "a\n")
    append_text(tmp_path / "fresh.jsonl", "b\n")
    assert (tmp_path / "fresh.jsonl").read_text() == "a\nb\n"


def test_callbacks_never_write_through_symlinks(tmp_path):
    """The checkpoint's config copy and the history: the files a run writes during training."""
    from transformers import TrainerState

    from adaptiverl.trainer.callback import AdaptiveCallback
    from adaptiverl.trainer.outputs import SaveConfigCallback

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "train_config.json").symlink_to(victim)
    (out / "checkpoint-2" / "adaptive_history.jsonl").symlink_to(victim)
    args = types.SimpleNamespace(output_dir=str(out), logging_steps=1)
    state = TrainerState(global_step=2)
    config = parse_config({"MODEL": "gpt2", "TRAIN_FILE": str(DATA / "sft_text.jsonl"), "MODE": "sft",
                           "PLOT": False})
    SaveConfigCallback(config).on_save(args, state, None)
    callback = AdaptiveCallback(require_targets=False)
    callback.history = [{"step": 1}, {"step": 2}]
    callback.on_save(args, state, None)
    assert victim.read_text() == "precious\n"
    assert json.loads((out / "checkpoint-2" / "train_config.json").read_text())["MODE"] == "sft"
    (out / "adaptive_history.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        callback.on_step_end(args, state, None)
    assert victim.read_text() == "precious\n"


def test_symlink_in_output_dir_is_refused_before_anything_is_written(tiny_gpt2_dir, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_config.json").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"'OUTPUT_DIR'.*symlinks \(train_config.json\)"):
        train(sft_config(tiny_gpt2_dir, out))
    assert victim.read_text() == "precious\n"


# ---- secrets ---------------------------------------------------------------------------------

def test_hub_token_is_redacted_in_every_training_args_bin(finished_run):
    files = [finished_run / "training_args.bin", *finished_run.glob("checkpoint-*/training_args.bin")]
    assert len(files) == 3
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
        args = torch.load(path, weights_only=False)
        assert args.hub_token == "<HUB_TOKEN>" and type(args).__name__ == "SFTConfig", path  # MODE sft
        assert type(args).__module__.startswith("trl.")  # loads without adaptiverl
    assert SECRET not in (finished_run / "train_config.json").read_text()


def test_redacted_arguments_keep_the_token_in_memory_and_in_copies():
    from transformers import TrainingArguments

    from adaptiverl.trainer.outputs import redact_pickled_secrets

    args = redact_pickled_secrets(TrainingArguments(output_dir="x", hub_token=SECRET, use_cpu=True))
    assert isinstance(args, TrainingArguments)
    assert args.hub_token == SECRET
    assert copy.deepcopy(args).hub_token == SECRET and copy.copy(args).hub_token == SECRET
    assert args.to_dict()["hub_token"] == "<HUB_TOKEN>"


# ---- a finished run: RESUME does nothing, a fresh run is refused, overwrite starts over ------

def test_resume_of_a_finished_run_trains_nothing_and_says_so(tiny_gpt2_dir, run_copy, capsys):
    model = (run_copy / "model.safetensors").read_bytes()
    history = (run_copy / "adaptive_history.jsonl").read_text()
    result = train(sft_config(tiny_gpt2_dir, run_copy, RESUME=True))
    assert sorted(p.name for p in run_copy.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (run_copy / "model.safetensors").read_bytes() == model
    assert (run_copy / "adaptive_history.jsonl").read_text() == history
    assert result.already_finished and result.global_step == 3 and result.trainer is None
    assert "already reached step 3 (STEPS 3); nothing to train" in capsys.readouterr().out
    # Finished after its newest checkpoint: the final trainer_state.json says so.
    shutil.rmtree(run_copy / "checkpoint-3")
    assert train(sft_config(tiny_gpt2_dir, run_copy, RESUME=True)).already_finished
    # A larger STEPS continues it.
    more = train(sft_config(tiny_gpt2_dir, run_copy, RESUME=True, STEPS=4))
    assert not more.already_finished and more.global_step == 4
    assert [r["step"] for r in more.history] == [1, 2, 3, 4]


def test_fresh_run_over_an_earlier_run_is_refused_unless_overwritten(tiny_gpt2_dir, run_copy):
    history = (run_copy / "adaptive_history.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"'OUTPUT_DIR'.*a finished run of 3 steps.*RESUME true.*"
                                          r"OVERWRITE_OUTPUT_DIR true"):
        train(sft_config(tiny_gpt2_dir, run_copy, STEPS=2))
    assert (run_copy / "adaptive_history.jsonl").read_text() == history
    fresh = train(sft_config(tiny_gpt2_dir, run_copy, STEPS=1, SAVE_STEPS=0, overwrite_output_dir=True))
    assert fresh.global_step == 1
    assert not list(run_copy.glob("checkpoint-*"))  # a later RESUME cannot continue the old run
    assert [json.loads(line)["step"] for line in (run_copy / "adaptive_history.jsonl").read_text().splitlines()] == [1]


def test_resume_from_a_checkpoint_path(tiny_gpt2_dir, finished_run, tmp_path):
    resumed = train(sft_config(tiny_gpt2_dir, tmp_path / "elsewhere",
                               TRAINER_ARGS={"resume_from_checkpoint": str(finished_run / "checkpoint-2")}))
    assert resumed.global_step == 3
    full = torch.load(finished_run / "checkpoint-3" / "optimizer.pt", weights_only=True)
    again = resumed.trainer.optimizer.optimizer.state_dict()
    torch.testing.assert_close(again["state"][0]["exp_avg"], full["state"][0]["exp_avg"], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="'resume_from_checkpoint'.*no such checkpoint folder"):
        train(sft_config(tiny_gpt2_dir, tmp_path / "x", TRAINER_ARGS={"resume_from_checkpoint": "nowhere"}))


# ---- checkpoints that cannot be resumed: torn, or from another model / optimizer / lr -------------

@pytest.mark.parametrize(("name", "keep"), [("model.safetensors", 0.5), ("optimizer.pt", 0.9),
                                            ("rng_state.pth", 0.0)])
def test_torn_newest_checkpoint_is_skipped_with_a_warning(tiny_gpt2_dir, run_copy, name, keep):
    torn = run_copy / "checkpoint-3" / name
    torn.write_bytes(torn.read_bytes()[:int(torn.stat().st_size * keep)])
    with pytest.warns(UserWarning, match=rf"skipping incomplete checkpoint .*checkpoint-3 \({name}"):
        chosen = run.preflight(sft_config(tiny_gpt2_dir, run_copy, RESUME=True, STEPS=5))
    assert chosen == run_copy / "checkpoint-2"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"OPTIM": "sgd"}, r"'OPTIM' = 'sgd' \(OnlineSGD\): .*checkpoint-3 was trained with OPTIM "
                       r"'adamw' \(OnlineAdamW\)"),
    ({"OPTIM": "torch.AdamW"}, r"\(AdaptiveOptimizer\(AdamW\)\).*\(OnlineAdamW\)"),
    ({"LRATE": 5e-3}, r"'LRATE' = 0.005: .*trained with LRATE 0.001 .*scheduler"),
    ({"FULLTUNE": False}, r"'FULLTUNE' = False: .*LoRA adapters"),
])
def test_resume_with_a_setting_the_checkpoint_is_bound_to_is_refused(tiny_gpt2_dir, run_copy, overrides,
                                                                     message):
    with pytest.raises(ConfigError, match=message):
        train(sft_config(tiny_gpt2_dir, run_copy, RESUME=True, STEPS=5, **overrides))


def test_resume_with_another_model_is_one_line(tiny_gpt2_dir, run_copy, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_gpt2_dir, other)
    with pytest.raises(ConfigError, match=r"'MODEL' = .*other-model.*was trained with MODEL"):
        train(sft_config(str(other), run_copy, RESUME=True, STEPS=5))


def test_unwritable_output_dir_is_one_line(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'OUTPUT_DIR' = '/proc/adaptiverl-out': cannot write there"):
        train(sft_config(tiny_gpt2_dir, "/proc/adaptiverl-out"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_output_dir_is_one_line(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="'OUTPUT_DIR'.*cannot write there"):
            train(sft_config(tiny_gpt2_dir, out))
    finally:
        out.chmod(0o700)


# ---- GRPO resumes bit for bit, also in a later epoch ------------------------------------------

class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_grpo_resume_in_a_later_epoch_equals_the_uninterrupted_run(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}"}) + "\n" for i in range(6)))

    def config(out, **overrides):
        return parse_config({"MODEL": tiny_gpt2_dir, "TRAIN_FILE": str(data), "OUTPUT_DIR": str(out),
                             "MODE": "rl", "OPTIM": "adamw", "LRATE": 1e-2, "BATCH_SIZE": 4,
                             "NUM_GENERATIONS": 2, "MAX_COMPLETION_LENGTH": 6, "MAXSEQ": 32, "STEPS": 7,
                             "SAVE_STEPS": 4, "LOGGING_STEPS": 1, "CPU_THREADS": 1, "PLOT": False, "SEED": 1,
                             "REWARDS": [{"type": "length", "target": 3, "unit": "words"}], **overrides})

    logging.Logger.warning_once.cache_clear()  # transformers' once-only warnings: shown again here
    recorded = Recorded()
    logging.getLogger("transformers").addHandler(recorded)
    full = train(config(tmp_path / "full"))  # 3 steps an epoch: checkpoint-4 is in the second
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", resumed_dir / "checkpoint-4")
    try:
        resumed = train(config(resumed_dir, RESUME=True))
    finally:
        logging.getLogger("transformers").removeHandler(recorded)
    warned = "\n".join(recorded.messages)
    assert "missing keys" not in warned  # lm_head.weight is tied to the embedding: stored once
    assert "attention_mask" not in warned  # the padding heuristic on decode steps that sampled EOS
    assert [r["reward"] for r in resumed.history] == [r["reward"] for r in full.history]
    a, b = params(full.trainer.model), params(resumed.trainer.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# ---- small things a user meets --------------------------------------------------------------

def test_trainer_package_exports_the_callback():
    from adaptiverl.trainer import AdaptiveCallback, AdaptiveGRPOTrainer
    from adaptiverl.trainer import train as train_
    from adaptiverl.trainer.callback import AdaptiveCallback as defined

    assert AdaptiveCallback is defined and train_ is train
    assert AdaptiveGRPOTrainer.__name__ == "AdaptiveGRPOTrainer"


def test_stock_trainer_warning_explains_a_long_logging_interval():
    from adaptiverl.trainer.callback import AdaptiveCallback

    with pytest.warns(UserWarning, match=r"logging_steps=500 the optimizer gets its first loss at step 501"):
        AdaptiveCallback()._warn_logs_only(types.SimpleNamespace(logging_steps=500))



def test_trl_defaults_raise_no_checkpointing_deprecation_warnings(tiny_gpt2_dir, tmp_path):
    """A stock-trainer script (``from adaptiverl.trainer import AdaptiveCallback``, TRL's GRPOConfig and
    its generation around the model's checkpointing switches) sees none of transformers' four notes."""
    import warnings

    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from adaptiverl.trainer import AdaptiveCallback

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    with warnings.catch_warnings(record=True) as seen:
        AdaptiveCallback()
        GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing
        model.gradient_checkpointing_disable()
    assert not [str(w.message) for w in seen if "checkpointing" in str(w.message)]
