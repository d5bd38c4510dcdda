"""CosineReward encodes each distinct text of a GRPO batch once, with the same rewards as pairwise encoding."""

from __future__ import annotations

import pytest
import torch

from adaptiverl.rewards.cosine import CosineReward


def pairwise(reward: CosineReward, completions: list[str], references: list[str]) -> list[float]:
    """The obviously-correct twin: encode every (completion, reference) pair on its own."""
    model = reward.sentence_model
    out = []
    for c, r in zip(completions, references, strict=True):
        e = model.encode([c, r], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        out.append(float((e[0] * e[1]).sum()))
    return out


def test_identical_completions_and_references_are_encoded_once():
    reward = CosineReward(device="cpu")
    refs = ["The cat sat on the mat.", "Paris is the capital of France."]
    # GRPO-style: 2 prompts x 4 generations; repeated completions, one equal to a reference.
    completions = ["A cat on a mat.", "A cat on a mat.", "The cat sat on the mat.", "Dogs bark.",
                   "Paris is in France.", "Paris is in France.", "Paris is in France.", "Trains are loud."]
    references = [refs[0]] * 4 + [refs[1]] * 4
    out = reward(completions=completions, reference=references)
    # distinct texts: 5 completions + 2 references, one of them shared
    assert reward.encoded_texts == 6
    assert out == pytest.approx(pairwise(reward, completions, references), abs=1e-5)
    assert out[2] == pytest.approx(1.0, abs=1e-5)
    # Next batch, same prompts: the references and any completion equal to one come from the cache.
    again = ["The cat sat on the mat.", "Cats sleep a lot.", "Cats sleep a lot.", "Paris is the capital of France."]
    out2 = reward(completions=again, reference=[refs[0]] * 3 + [refs[1]])
    assert reward.encoded_texts == 6 + 1
    assert out2[0] == pytest.approx(1.0, abs=1e-5) and out2[3] == pytest.approx(1.0, abs=1e-5)
    assert out2[1] == out2[2]


def test_fixed_targets_and_empty_batch():
    reward = CosineReward(device="cpu", targets=["a polite greeting", "a question"], aggregate="mean")
    completions = ["Hello there!", "Hello there!", "Why?"]
    out = reward(completions=completions)
    assert reward.encoded_texts == 2 + 2
    model = reward.sentence_model
    e = model.encode(["Hello there!", "a polite greeting", "a question"], convert_to_tensor=True,
                     normalize_embeddings=True, show_progress_bar=False)
    assert out[0] == out[1] == pytest.approx(float(torch.mv(e[1:], e[0]).mean()), abs=1e-5)
    assert reward(completions=[]) == []
