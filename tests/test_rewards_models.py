"""Model-backed rewards: cosine (MiniLM), learned classifier (trained with the reward_models/
recipe through TRL's RewardTrainer), and the local LM judge, all on locally built models."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

from adaptiverl.rewards import build_reward
from adaptiverl.rewards.cosine import CosineReward, default_model_path, load_sentence_model
from adaptiverl.rewards.judge import LocalJudgeReward
from adaptiverl.rewards.learned import ClassifierReward

RECIPE = Path(__file__).resolve().parents[1] / "reward_models" / "train_reward_model.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_reward_model", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cosine() -> CosineReward:
    reward = CosineReward(device="cpu")
    assert reward.sentence_model is not None  # load MiniLM once for the module
    return reward


def test_cosine_reference_column_and_semantics(cosine):
    refs = ["The cat sat on the mat.", "Paris is the capital of France."]
    out = cosine(prompts=["a", "b"],
                 completions=["A cat was sitting on a mat.", "I like trains a lot."], reference=refs)
    same = cosine(completions=refs, reference=refs)
    assert same == pytest.approx([1.0, 1.0], abs=1e-4)
    assert out[0] > 0.6 > out[1]
    conv = [[{"role": "assistant", "content": "A cat was sitting on a mat."}]]
    assert cosine(completions=conv, reference=refs[:1]) == pytest.approx(out[:1], abs=1e-5)
    several = cosine(completions=["Paris is in France."], reference=[[refs[0], refs[1]]])
    best = cosine(completions=["Paris is in France."], reference=[refs[1]])
    assert several == pytest.approx(best, abs=1e-5)
    with pytest.raises(KeyError, match="'reference'.*column"):
        cosine(completions=["x"])


def test_cosine_fixed_targets_cache_and_pickle(cosine):
    targets = CosineReward(targets=["a polite greeting"], device="cpu", name="greet")
    a, b = targets(completions=["Hello, nice to meet you!", "Compile the kernel with make."])
    assert a > b
    assert targets.sentence_model is cosine.sentence_model  # one model per process and device
    assert load_sentence_model(default_model_path(), "cpu") is cosine.sentence_model
    blob = pickle.dumps(targets)
    assert len(blob) < 10_000  # the model is not pickled
    assert pickle.loads(blob)(completions=["Hello, nice to meet you!"]) == pytest.approx([a], abs=1e-5)
    spec = build_reward({"type": "cosine", "targets": "hi", "weight": 0.3})
    assert isinstance(spec, CosineReward) and spec.targets == ["hi"]


@pytest.fixture(scope="module")
def sentiment_dir(tiny_gpt2_dir, tmp_path_factory) -> str:
    """A tiny two-label classifier (random head) saved with label names."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config.from_pretrained(tiny_gpt2_dir, num_labels=2,
                                        id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    config.pad_token_id = tok.eos_token_id
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config)
    out = tmp_path_factory.mktemp("sentiment")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_classifier_labels_signs_and_truncation(sentiment_dir):
    texts = ["what a lovely day", "this is awful", "x " * 2000]  # the last exceeds n_positions
    pos = ClassifierReward(sentiment_dir, label="positive")(completions=texts)
    neg = ClassifierReward(sentiment_dir, label=0, sign=-1.0)(completions=texts)
    assert all(0 < p < 1 for p in pos)
    assert [p - n for p, n in zip(pos, neg, strict=True)] == pytest.approx([1.0] * 3, abs=1e-5)
    logits = ClassifierReward(sentiment_dir, label="POSITIVE", output="logit", batch_size=2)(completions=texts)
    assert len(logits) == 3 and logits != pos
    with pytest.raises(ValueError, match="choose one with label="):
        ClassifierReward(sentiment_dir)(completions=["a"])
    with pytest.raises(ValueError, match="'toxic' not among"):
        ClassifierReward(sentiment_dir, label="toxic")(completions=["a"])


@pytest.mark.slow
def test_reward_model_recipe_trains_and_loads_as_learned_reward(tiny_gpt2_dir, tmp_path):
    recipe = load_recipe()
    out = recipe.train_reward_model(tiny_gpt2_dir, tmp_path / "rm", steps=8, learning_rate=1e-3,
                                    batch_size=8, max_length=64, use_cpu=True)
    rows = recipe.load_preferences(recipe.DEFAULT_DATA)
    assert len(rows) >= 30
    reward = build_reward({"type": "learned", "model": str(out), "include_prompt": True})
    prompts = [r["prompt"] for r in rows]
    chosen = reward(prompts=prompts, completions=[r["chosen"] for r in rows])
    rejected = reward(prompts=prompts, completions=[r["rejected"] for r in rows])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)
    assert accuracy >= 0.8, accuracy


def test_preference_file_errors_name_the_line(tmp_path):
    recipe = load_recipe()
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"prefs.jsonl:2: key 'rejected'"):
        recipe.load_preferences(bad)


def test_local_judge_yes_probability_and_grade(tiny_gpt2_dir):
    judge = LocalJudgeReward(tiny_gpt2_dir, device="cpu")
    out = judge(prompts=["Is water wet?", "2+2?"], completions=["Yes.", "5"])
    assert all(0.0 < v < 1.0 for v in out)
    # Same answer, different prompt templates: the score comes from the model, so it moves.
    other = LocalJudgeReward(tiny_gpt2_dir, template="{completion} Correct? Answer:", device="cpu")
    assert other(prompts=["Is water wet?"], completions=["Yes."]) != out[:1]
    grader = LocalJudgeReward(tiny_gpt2_dir, mode="grade", max_new_tokens=3, device="cpu")
    grades = grader(prompts=["q", "q"], completions=["a", "b"])
    assert all(g is None or 0.0 <= g <= 1.0 for g in grades)
    assert pickle.loads(pickle.dumps(judge))._loaded is None
