"""Issue 19 items 3-4 and issue 18 item 14: datasets the way `trl sft` / `trl grpo` take them (a
dataset folder with splits, an eval split evaluated during training), chat SFT through TRL's
SFTTrainer, and bad data named before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptiverl.trainer.config import ConfigError, load_config, parse_config
from adaptiverl.trainer.run import preflight, train

ROOT = Path(__file__).resolve().parent.parent
CHATML = ROOT / "configs" / "data" / "chatml.jinja"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_config(model_dir, out, **overrides):
    raw = {"MODEL": model_dir, "OUTPUT_DIR": str(out), "MODE": "rl", "BATCH_SIZE": 2, "NUM_GENERATIONS": 2,
           "MAX_COMPLETION_LENGTH": 6, "MAXSEQ": 40, "STEPS": 4, "LOGGING_STEPS": 1, "CPU_THREADS": 1,
           "PLOT": False, "REWARDS": [{"type": "length", "target": 4}]}
    raw.update(overrides)
    return raw


# ---- bad training data is named before any model loads (issue 18 item 14) -------------------------

@pytest.mark.parametrize(("prompts", "fragment"), [
    ([1, 2], "holds int64"),
    (["ok", None], "empty (null) in 1 row(s), the first is row 1"),
    ([["a", "b"], ["c"]], "holds lists of string"),
])
def test_bad_prompt_cells_are_named_before_the_model_loads(tiny_gpt2_dir, tmp_path, prompts, fragment):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    c = parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(data)))
    with pytest.raises(ConfigError) as err:
        preflight(c)
    assert "'TRAIN_FILE'" in str(err.value) and "'prompt'" in str(err.value) and fragment in str(err.value)


def test_non_utf8_train_file_is_named(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    c = parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(data)))
    with pytest.raises(ConfigError, match=r"'TRAIN_FILE'.*latin1.jsonl is not UTF-8 text \(byte 15\)"):
        preflight(c)


def test_conversational_prompts_are_accepted(tiny_gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    preflight(parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(data))))


# ---- dataset_name, splits, evaluation (issue 19 item 3) ---------------------------------------------

@pytest.fixture()
def prompt_folder(tmp_path):
    folder = tmp_path / "prompts"
    write_jsonl(folder / "train.jsonl", [{"prompt": f"Tell me about {w}"} for w in ("cats", "rain", "tea", "maps")])
    write_jsonl(folder / "test.jsonl", [{"prompt": f"Say {w}"} for w in ("yes", "no")])
    return folder


def test_grpo_on_a_dataset_folder_evaluates_the_test_split(tiny_gpt2_dir, tmp_path, prompt_folder):
    config = tmp_path / "grpo.json"  # dataset_name relative to the config file, run from elsewhere
    config.write_text(json.dumps(rl_config(tiny_gpt2_dir, tmp_path / "out", dataset_name="prompts",
                                           eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=2)))
    result = train(load_config(config))
    logs = result.trainer.state.log_history
    evals = [row for row in logs if "eval_reward" in row]
    assert [row["step"] for row in evals] == [2, 4]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())  # what the plots read
    assert any("eval_reward" in row for row in state["log_history"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "split 'train'" in card


def test_missing_split_and_unreachable_hub_are_one_line(tiny_gpt2_dir, tmp_path, prompt_folder):
    bad_split = parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", dataset_name=str(prompt_folder),
                                       dataset_train_split="training"))
    with pytest.raises(ConfigError, match=r"no split 'training' \(dataset_train_split\); it has \['test', 'train'\]"):
        preflight(bad_split)
    no_eval = parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", dataset_name=str(prompt_folder),
                                     dataset_test_split="validation", eval_strategy="steps"))
    with pytest.raises(ConfigError, match="no split 'validation' \\(dataset_test_split\\)"):
        preflight(no_eval)
    hub = parse_config(rl_config(tiny_gpt2_dir, tmp_path / "out", dataset_name="no-such-org/no-such-data"))
    with pytest.raises(ConfigError) as err:
        preflight(hub)
    assert "'dataset_name'" in str(err.value) and "hub" in str(err.value) and "\n" not in str(err.value)


def test_train_file_and_dataset_name_are_exclusive(tmp_path, prompt_folder):
    raw = {"MODEL": "gpt2", "TRAIN_FILE": str(prompt_folder / "train.jsonl"), "dataset_name": str(prompt_folder),
           "REWARDS": [{"type": "length", "target": 4}]}
    with pytest.raises(ConfigError, match="not both"):
        parse_config(raw, check_hardware=False)
    with pytest.raises(ConfigError, match="give the training data"):
        parse_config({"MODEL": "gpt2", "REWARDS": [{"type": "length", "target": 4}]}, check_hardware=False)


# ---- SFT through TRL's SFTTrainer (issue 19 item 4) --------------------------------------------------

def sft_config(model_dir, out, **overrides):
    raw = {"MODEL": model_dir, "OUTPUT_DIR": str(out), "MODE": "sft", "BATCH_SIZE": 2, "MAXSEQ": 64,
           "STEPS": 3, "LOGGING_STEPS": 1, "CPU_THREADS": 1, "PLOT": False, "LRATE": 1e-3}
    raw.update(overrides)
    return parse_config(raw)


def trained_tokens(row) -> int:
    """Tokens the loss sees (TRL masks the others' labels with -100)."""
    return sum(label != -100 for label in row["labels"])


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_chat_sft_with_assistant_only_loss_and_eval(tiny_gpt2_dir, tmp_path):
    folder = tmp_path / "chat"
    write_jsonl(folder / "train.jsonl", [chat(f"What is {w}?", f"{w} is a word.") for w in ("tea", "sky", "sea", "oak")])
    write_jsonl(folder / "test.jsonl", [chat("What is ink?", "ink is a word.")])
    result = train(sft_config(tiny_gpt2_dir, tmp_path / "out", dataset_name=str(folder),
                              chat_template_path=str(CHATML), assistant_only_loss=True,
                              eval_strategy="steps", eval_steps=3))
    trainer = result.trainer
    assert type(trainer).__name__ == "AdaptiveSFTTrainer"
    row = trainer.train_dataset[0]
    # only the assistant's tokens are trained on: the user's turn is masked out
    assert 0 < trained_tokens(row) < len(row["input_ids"])
    assert any("eval_loss" in r for r in trainer.state.log_history)
    assert result.global_step == 3


def test_prompt_completion_sft_trains_on_the_completion_and_packing_works(tiny_gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"Q: {w}? A:", "completion": f" {w}."}
                                                for w in ("tea", "sky", "sea", "oak", "ink", "elm")])
    result = train(sft_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(data)))
    row = result.trainer.train_dataset[0]
    assert 0 < trained_tokens(row) < len(row["input_ids"])  # completion-only loss
    packed = train(sft_config(tiny_gpt2_dir, tmp_path / "packed", TRAIN_FILE=str(data), packing=True, STEPS=1))
    assert len(packed.trainer.train_dataset) < 6  # six short examples packed into fewer rows of MAXSEQ


def test_sft_needs_one_of_trls_formats(tiny_gpt2_dir, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "why"}])
    with pytest.raises(ConfigError, match=r"needs a 'text' column, 'messages', or 'prompt' \+ 'completion'"):
        preflight(sft_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(data)))


# ---- issue 16 item 2: horizon as a config key ----------------------------------------------------------

@pytest.mark.parametrize(("horizon", "told"), [(None, 2), ("false", None), (True, 2)])
def test_horizon_key_sets_the_callbacks_horizon(tiny_gpt2_dir, tmp_path, horizon, told):
    extra = {} if horizon is None else {"HORIZON": horizon}
    result = train(sft_config(tiny_gpt2_dir, tmp_path / "out", TRAIN_FILE=str(ROOT / "configs" / "data" / "sft_text.jsonl"),
                              STEPS=2, **extra))
    optimizer = result.trainer.optimizer.optimizer  # under accelerate's wrapper: OnlineAdamW
    assert optimizer.total_steps == told
