"""The JSON training config: coercion of seed-style string values, and errors that name the culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptiverl.trainer.config import (
    ConfigError,
    TrainConfig,
    load_config,
    parse_config,
    strip_comments,
)


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Return the", "reference": "value"}) + "\n")
    return str(path)


def base(prompts_file, **overrides):
    raw = {"MODEL": "gpt2", "TRAIN_FILE": prompts_file,
           "REWARDS": [{"type": "length", "target": 10}]}
    raw.update(overrides)
    return raw


def test_seed_example_with_string_values_resolves_to_native_types(tmp_path, prompts_file):
    # The seed's example config (FP16 switched off so it is valid on a CPU machine).
    seed = {"MODEL": "gpt2", "TRAIN_FILE": prompts_file, "OUTPUT_DIR": "checkpoints",
            "BATCH_SIZE": "2", "EPOCHS": "3", "LRATE": "5e-5", "STEPS": "1000", "OPTIM": "adamw",
            "MAXSEQ": "512", "BF16": "false", "FP16": "false", "LOAD_4BIT": "false",
            "LOAD_8BIT": "false", "FULLTUNE": "true", "REWARDS": [{"type": "length", "target": 5}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(seed))
    c = load_config(path)
    assert (c.BATCH_SIZE, c.EPOCHS, c.LRATE, c.STEPS, c.MAXSEQ) == (2, 3.0, 5e-5, 1000, 512)
    assert c.BF16 is False and c.FULLTUNE is True and c.OPTIM == "adamw"
    native = parse_config({**seed, "BATCH_SIZE": 2, "EPOCHS": 3, "LRATE": 5e-5, "STEPS": 1000,
                           "MAXSEQ": 512, "BF16": False, "FP16": False, "LOAD_4BIT": False,
                           "LOAD_8BIT": False, "FULLTUNE": True})
    assert native == c


def test_resolved_config_round_trips_through_save(tmp_path, prompts_file):
    c = parse_config(base(prompts_file, REPORT_TO="tensorboard, none", OPTIM="adagrad"))
    assert c.REPORT_TO == ["tensorboard"] and c.OPTIM == "Adagrad"
    saved = c.save(tmp_path / "out" / "config.json")
    assert parse_config(json.loads(saved.read_text())) == c


def test_unknown_key_names_itself_suggests_closest_and_lists_valid_keys(prompts_file):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, BATCH_SIZ="2"))
    message = str(err.value)
    assert "'BATCH_SIZ'" in message and "Did you mean 'BATCH_SIZE'?" in message
    assert "SAVE_STEPS" in message and "NUM_GENERATIONS" in message


@pytest.mark.parametrize(("key", "value"), [
    ("BATCH_SIZE", "two"), ("BATCH_SIZE", 2.5), ("LRATE", "fast"), ("FP16", "maybe"),
    ("FULLTUNE", 3), ("STEPS", True), ("MODEL", 7), ("REWARDS", {"type": "length"}),
])
def test_wrong_type_names_key_and_value(prompts_file, key, value):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **{key: value}))
    assert repr(key) in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("MODE", "ppo", "must be one of rl, rloo, sft"),
    ("BATCH_SIZE", 0, "must be >= 1"),
    ("STEPS", 0, "positive number of steps"),
    ("LRATE", -1, "must be > 0"),
    ("OPTIM", "adamww", "Did you mean 'adamw'?"),
    ("NUM_GENERATIONS", 1, "at least 2"),
    ("MAX_COMPLETION_LENGTH", 600, "smaller than MAXSEQ"),
    ("REWARDS", [], "needs at least one reward spec"),
    ("LORA_DROPOUT", 1.5, "[0, 1)"),
])
def test_invalid_values_name_key(prompts_file, key, value, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **{key: value}))
    assert repr(key) in str(err.value) and fragment in str(err.value)


def test_missing_train_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(ConfigError) as err:
        parse_config({"MODEL": "gpt2", "TRAIN_FILE": str(missing), "MODE": "sft"})
    assert "TRAIN_FILE" in str(err.value) and str(missing) in str(err.value)


def test_train_file_is_also_found_next_to_the_config(tmp_path):
    (tmp_path / "texts.csv").write_text("text\nhello world\n")
    (tmp_path / "config.json").write_text(json.dumps({"MODEL": "gpt2", "TRAIN_FILE": "texts.csv", "MODE": "sft"}))
    c = load_config(tmp_path / "config.json")
    resolved = Path(c.TRAIN_FILE)
    assert resolved == (tmp_path / "texts.csv").resolve()


def test_unsupported_train_file_type(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(ConfigError, match="unsupported file type '.txt'"):
        parse_config({"MODEL": "gpt2", "TRAIN_FILE": str(tmp_path / "data.txt"), "MODE": "sft"})


def test_missing_required_key(prompts_file):
    with pytest.raises(ConfigError, match="missing required key.*MODEL"):
        parse_config({"TRAIN_FILE": prompts_file, "MODE": "sft"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("key", ["FP16", "LOAD_8BIT", "LOAD_4BIT"])
def test_precision_and_quantization_the_machine_cannot_do(prompts_file, key):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **{key: "true", "FULLTUNE": "false"}))
    assert repr(key) in str(err.value) and "CUDA" in str(err.value)


def test_bf16_runs_on_cpu_and_conflicting_switches_fail(prompts_file):
    if not torch.cuda.is_available():
        assert parse_config(base(prompts_file, BF16="true")).BF16 is True
    with pytest.raises(ConfigError, match="mutually exclusive"):
        parse_config(base(prompts_file, BF16="true", FP16="true"))
    with pytest.raises(ConfigError, match="FULLTUNE"):
        parse_config(base(prompts_file, LOAD_8BIT="true"), check_hardware=False)


def test_every_field_has_help_text():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f.name


@pytest.mark.parametrize("name", ["quickstart.json", "gpt2_full.json", "gpt2_lora.json", "gpt2_8bit.json",
                                  "gpt2_sft.json", "gpt2_lora_grpo.yaml", "grpo_dataset.yaml", "sft_chat.yaml"])
def test_shipped_configs_are_valid(name):
    c = load_config(Path(__file__).parent.parent / "configs" / name, check_hardware=False)
    assert c.MODEL


def test_the_trl_style_yaml_matches_the_seed_style_lora_config():
    configs = Path(__file__).parent.parent / "configs"
    trl_style = load_config(configs / "gpt2_lora_grpo.yaml", check_hardware=False)
    seed_style = load_config(configs / "gpt2_lora.json", check_hardware=False)
    assert trl_style.TRAINER_ARGS == {"top_p": 0.95, "loss_type": "dr_grpo", "scale_rewards": "batch"}
    differ = {k for k, v in trl_style.to_dict().items() if v != getattr(seed_style, k)}
    assert differ == {"TRAINER_ARGS", "OUTPUT_DIR"}


def test_docs_table_lists_every_key():
    import dataclasses

    doc = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    for f in dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in doc, f"docs/training.md lacks config key {f.name}"


def test_missing_logger_package_is_named(prompts_file, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="REPORT_TO.*'wandb'.*not installed"):
        parse_config(base(prompts_file, REPORT_TO="wandb"))


SEED_CONFIG = """{
  "MODEL": "gpt2",
  "TRAIN_FILE": "data.json",
  "OUTPUT_DIR": "checkpoints",
  "BATCH_SIZE": "2",
  "EPOCHS": "3",
  "LRATE": "5e-5",
  "STEPS": "1000",
  "OPTIM": "adamw",          // "sgd", "rmsprop", "adamw"
  "MAXSEQ": "512",
  "BF16": "false",
  "FP16": "true",
  "LOAD_4BIT": "false",
  "LOAD_8BIT": "false",
  "FULLTUNE": "true"
}"""


def test_the_seed_config_verbatim_with_its_comment(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps([{"text": "hello // not a comment"}]))
    path = tmp_path / "config.json"
    path.write_text(SEED_CONFIG.replace('"gpt2",', '"gpt2", "MODE": "sft",'))
    c = load_config(path, check_hardware=False)
    assert (c.OPTIM, c.FP16, c.BATCH_SIZE, c.LRATE) == ("adamw", True, 2, 5e-5)
    if not torch.cuda.is_available():  # FP16 "true" as in the seed: a clear error on CPU
        with pytest.raises(ConfigError, match="'FP16' = true.*CUDA"):
            load_config(path)
    assert strip_comments('{"A": "x // y", "B": 1} // c') == '{"A": "x // y", "B": 1} '



def test_bad_reward_spec_is_reported_before_any_model_loads(prompts_file):
    """A typo inside a REWARDS spec names the component, its type and the key at validation time."""
    raw = base(prompts_file, REWARDS=[{"type": "length", "target": 10},
                                      {"type": "regex", "patern": "x"}])
    with pytest.raises(ConfigError, match=r"REWARDS.*component 1.*regex.*patern"):
        parse_config(raw)


@pytest.mark.parametrize(("given", "resolved"), [
    ("adamw", "adamw"), ("AdamW", "adamw"), ("torch.AdamW", "torch.AdamW"),
    ("torch.adagrad", "Adagrad"), ("torch.SGD", "torch.SGD"),
])
def test_torch_prefix_picks_torchs_own_optimizer_over_the_online_one(prompts_file, given, resolved):
    c = parse_config(base(prompts_file, OPTIM=given))
    assert resolved == c.OPTIM
    assert resolved == parse_config(base(prompts_file, OPTIM=c.OPTIM)).OPTIM  # stable on reload



# ---- TRL names, YAML, command-line overrides ------------------------------------------------

QUICKSTART = Path(__file__).parent.parent / "configs" / "quickstart.json"


def test_command_line_overrides_the_file_in_either_spelling():
    from adaptiverl.trainer.config import parse_command_line

    c = parse_command_line([str(QUICKSTART), "--learning_rate", "1e-3", "--max_steps", "50",
                            "--LOGGING_STEPS", "5", "--top_p", "0.9", "--use_peft"],
                           check_hardware=False)
    assert (c.LRATE, c.STEPS, c.LOGGING_STEPS, c.FULLTUNE) == (1e-3, 50, 5, False)
    assert c.TRAINER_ARGS == {"top_p": 0.9}
    assert c.BATCH_SIZE == 8 and c.OPTIM == "adamw"  # the file's values where no flag is given
    trl_style = parse_command_line(["--config", str(QUICKSTART), "--max_steps=7"], check_hardware=False)
    assert trl_style.STEPS == 7


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--learning_rat", "1e-3"], "unknown argument '--learning_rat'. Did you mean 'learning_rate'?"),
    (["--learning_rate", "fast"], "--learning_rate"),
    (["--LRATE", "inf"], "'LRATE' = 'inf': must be a finite number"),
    (["--optim", "adamw_torch"], "pick it with OPTIM"),
    (["--max_steps"], "--max_steps"),
])
def test_bad_command_line_is_one_error_naming_the_flag(argv, fragment):
    from adaptiverl.trainer.config import parse_command_line

    with pytest.raises(ConfigError) as err:
        parse_command_line([str(QUICKSTART), *argv], check_hardware=False)
    assert fragment in str(err.value)


def test_yaml_with_trl_names_resolves_like_the_seed_keys(tmp_path, prompts_file):
    yaml_file = tmp_path / "grpo.yaml"
    yaml_file.write_text(f"model_name_or_path: gpt2\ntrain_file: {prompts_file}\nlearning_rate: 5e-5\n"
                         "per_device_train_batch_size: 4\nnum_generations: 4\nuse_peft: true\n"
                         "lora_r: 4\nrewards:\n  - {type: length, target: 10}\n"
                         "loss_type: dr_grpo\ndtype: float32\n")
    c = load_config(yaml_file)
    seed = parse_config(base(prompts_file, LRATE="5e-5", BATCH_SIZE="4", NUM_GENERATIONS="4",
                             FULLTUNE="false", LORA_R="4", TRAINER_ARGS={"loss_type": "dr_grpo"},
                             MODEL_ARGS={"dtype": "float32"}))
    assert c == seed


def test_every_trainer_field_is_reachable_and_typed_like_trlparser(prompts_file):
    c = parse_config(base(prompts_file, top_p="0.9", num_iterations="2", scale_rewards="batch",
                          reward_weights="1.0", activation_checkpointing="false", use_vllm="false"))
    assert c.TRAINER_ARGS == {"top_p": 0.9, "num_iterations": 2, "scale_rewards": "batch",
                              "reward_weights": [1.0], "activation_checkpointing": False,
                              "use_vllm": False}
    from adaptiverl.trainer.config import config_parser

    flags = config_parser("rl").format_help()
    assert all(f"--{name}" in flags for name in ("top_p", "learning_rate", "optimizer", "use_peft",
                                                 "rewards", "push_to_hub"))
    # the deprecated alias folds into its successor
    assert parse_config(base(prompts_file, gradient_checkpointing="true")).TRAINER_ARGS == \
        {"activation_checkpointing": True}


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"learning_rate": 1e-3, "LRATE": 1e-3}, "the same setting is also given as"),
    ({"num_generationz": 2}, "Did you mean 'num_generations'?"),
    ({"MODE": "sft", "top_p": 0.9}, "'top_p': a field of GRPOConfig (MODE 'rl')"),
    ({"top_k": "many"}, "config key 'top_k' = 'many'"),
    ({"TRAINER_ARGS": {"learning_rate": 1}}, "a config key of its own"),
    ({"optim_args": "x=1"}, "OPTIM_ARGS"),
])
def test_trl_names_errors_name_the_key(prompts_file, raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **raw))
    assert fragment in str(err.value)


# ---- the dataclass validates itself (issue 13) and refuses non-finite numbers (issue 12) ------

def test_trainconfig_in_python_resolves_as_the_same_keys_from_json(tmp_path, prompts_file):
    built = TrainConfig(MODEL="gpt2", TRAIN_FILE=prompts_file, OPTIM="AdamW", BATCH_SIZE="4",
                        NUM_GENERATIONS=4, REWARDS=[{"type": "length", "target": 10}])
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"MODEL": "gpt2", "TRAIN_FILE": prompts_file, "OPTIM": "AdamW",
                                "BATCH_SIZE": "4", "NUM_GENERATIONS": 4,
                                "REWARDS": [{"type": "length", "target": 10}]}))
    assert built.OPTIM == "adamw" and built.BATCH_SIZE == 4 and built == load_config(path)
    with pytest.raises(ConfigError, match="'MODE' = 'bogus'"):
        TrainConfig(MODEL="gpt2", TRAIN_FILE=prompts_file, MODE="bogus", BATCH_SIZE=-3)
    with pytest.raises(ConfigError, match="'BATCH_SIZE' = -3: must be >= 1"):
        TrainConfig(MODEL="gpt2", TRAIN_FILE=prompts_file, MODE="sft", BATCH_SIZE=-3)


@pytest.mark.parametrize(("key", "value"), [
    ("LRATE", "inf"), ("MAX_GRAD_NORM", "nan"), ("TEMPERATURE", "inf"), ("EPOCHS", float("nan")),
    ("WEIGHT_DECAY", "-inf"), ("OPTIM_ARGS", {"lr": float("inf")}), ("OPTIM_ARGS", {"betas": [0.9, "nan"]}),
    ("top_p", "nan"), ("REWARDS", [{"type": "length", "target": 10, "weight": float("inf")}]),
])
def test_non_finite_numbers_are_refused_by_key(prompts_file, key, value):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **{key: value}))
    assert key in str(err.value) and "finite" in str(err.value)


def test_a_torch_optimizer_without_rules_is_the_plain_optimizer(prompts_file):
    plain = parse_config(base(prompts_file, OPTIM="torch.AdamW"))
    assert plain.ADAPTIVE_ARGS == {"lr_rule": None}
    assert parse_config(plain.to_dict()) == plain
    ruled = parse_config(base(prompts_file, OPTIM="torch.AdamW", ADAPTIVE_ARGS={"lr_rule": "trend"}))
    assert ruled.ADAPTIVE_ARGS == {"lr_rule": "trend"}
    assert parse_config(base(prompts_file, OPTIM="adamw")).ADAPTIVE_ARGS == {}


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"NUM_GENERATIONS": 3}, "multiple of NUM_GENERATIONS (3)"),
    ({"LR_SCHEDULER": "cosin"}, "Did you mean 'cosine'?"),
])
def test_values_checked_before_the_trainer(prompts_file, raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(base(prompts_file, **raw))
    assert fragment in str(err.value)


def test_output_dir_that_is_a_file(prompts_file):
    with pytest.raises(ConfigError, match="'OUTPUT_DIR'.*is a file"):
        parse_config(base(prompts_file, OUTPUT_DIR=prompts_file))


def test_a_hub_token_is_not_written_with_the_config(tmp_path, prompts_file):
    c = parse_config(base(prompts_file, hub_token="hf_secretsecretsecret", push_to_hub="false"))
    assert c.TRAINER_ARGS["hub_token"] == "hf_secretsecretsecret"  # the trainer still gets it
    text = c.save(tmp_path / "train_config.json").read_text()
    assert "hf_secret" not in text and '"hub_token": "<HUB_TOKEN>"' in text
