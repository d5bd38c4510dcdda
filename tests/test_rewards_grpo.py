"""Every reward component and the composite inside a real trl.GRPOTrainer run (tiny GPT-2, CPU)."""

from __future__ import annotations

import inspect
import math
import threading

import pytest
import torch

from adaptiverl.rewards import build_rewards
from adaptiverl.rewards.human import HumanFeedbackReward, parse_rating

pytestmark = pytest.mark.slow


def annotate_forever(reward: HumanFeedbackReward, stop: threading.Event) -> None:
    """A stand-in annotator: rates every queued request +1 (even-length completion) or -1."""
    import json

    answered: set[str] = set()
    while not stop.is_set():
        if reward.requests_path.exists():
            lines = reward.requests_path.read_text().splitlines()
            with reward.answers_path.open("a") as fh:
                for line in lines:
                    req = json.loads(line)
                    if req["id"] not in answered:
                        answered.add(req["id"])
                        fh.write(json.dumps({"id": req["id"],
                                             "rating": 1 if len(req["completion"]) % 2 == 0 else -1}) + "\n")
        stop.wait(0.02)


def test_every_component_and_the_composite_in_grpo(tiny_gpt2_dir, tmp_path, monkeypatch):
    from datasets import Dataset
    from test_rewards_judge_http import KEY_ENV, SECRET, JudgeServer
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification
    from trl import GRPOConfig, GRPOTrainer

    # A local sequence classifier for the learned component.
    config = GPT2Config.from_pretrained(tiny_gpt2_dir, num_labels=2, id2label={0: "BAD", 1: "GOOD"},
                                        label2id={"BAD": 0, "GOOD": 1})
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    config.pad_token_id = tok.eos_token_id
    clf_dir = tmp_path / "clf"
    GPT2ForSequenceClassification(config).save_pretrained(clf_dir)
    tok.save_pretrained(clf_dir)

    monkeypatch.setenv(KEY_ENV, SECRET)
    server = JudgeServer()
    queue = tmp_path / "queue"
    specs = [
        {"type": "regex", "pattern": r"\w+", "weight": 0.5},
        {"type": "substring", "substrings": ["the", "a"], "case_sensitive": False, "weight": 0.5},
        {"type": "length", "target": 20, "weight": 1.0, "schedule": [[0, 0.5], [2, 1.0]]},
        {"type": "cosine", "device": "cpu", "weight": 1.0},
        {"type": "learned", "model": str(clf_dir), "label": "GOOD", "device": "cpu", "weight": 0.5},
        {"type": "judge", "model": tiny_gpt2_dir, "device": "cpu", "weight": 0.5},
        {"type": "http_judge", "base_url": server.url, "model": "judge", "api_key_env": KEY_ENV,
         "weight": 0.5},
        {"type": "human", "mode": "queue", "queue_dir": str(queue), "timeout": 20,
         "log_path": str(tmp_path / "ratings.jsonl"), "poll_interval": 0.02, "weight": 0.25},
    ]
    composite = build_rewards(specs, normalize="zscore", clip=3.0)
    assert inspect.iscoroutinefunction(type(composite).__call__)  # TRL awaits it with its async rewards
    components = [c.fn for c in composite.components]
    human = components[-1]
    stop = threading.Event()
    annotator = threading.Thread(target=annotate_forever, args=(human, stop), daemon=True)
    annotator.start()

    dataset = Dataset.from_list([
        {"prompt": "The module provides", "reference": "The module provides functions for files."},
        {"prompt": "Return the value of", "reference": "Return the value of the named attribute."},
        {"prompt": "This class implements", "reference": "This class implements a simple queue."},
        {"prompt": "Create a new", "reference": "Create a new empty dictionary."},
    ])
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=2, logging_steps=1,
        per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        learning_rate=1e-4, save_strategy="no", seed=0, bf16=False, fp16=False,
        reward_weights=[1.0] + [0.0] * len(components),
    )
    try:
        trainer = GRPOTrainer(model=tiny_gpt2_dir, args=args, train_dataset=dataset,
                              reward_funcs=[composite, *components], processing_class=tok)
        trainer.train()
    finally:
        stop.set()
        annotator.join(timeout=5)
        server.close()

    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    names = ["regex", "substring", "length", "cosine", "learned", "judge", "http_judge", "human"]
    for name in ["composite", *names]:
        assert math.isfinite(logs[f"rewards/{name}/mean"]), name
    for name in names:
        assert math.isfinite(logs[f"composite/{name}/mean"]), name
        assert f"composite/{name}/weight" in logs
    assert composite.last_weights["length"] == pytest.approx(0.5 + 0.5 * 1 / 2)  # step 1 of the schedule
    assert set(composite.last_components) == set(names)
    assert all(math.isfinite(v) for v in composite.last_components.values())
    assert composite.calls == 2 and len(server.requests) == 2 * 4 * 2  # 2 steps x 4 completions x (composite + standalone)
    ratings = [json_line["rating"] for json_line in _jsonl(tmp_path / "ratings.jsonl")]
    assert len(ratings) == 2 * 4 * 2 and all(parse_rating(r) == (True, r) for r in ratings)
    assert torch.isfinite(torch.tensor(logs["loss"]))


def _jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
