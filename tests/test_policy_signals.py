"""RL signals: the policy change per update (KL before/after an optimizer step) and its feeding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from adaptiverl.signals.policy import (
    PolicyProbe,
    completion_logits,
    exact_token_kl,
    sampled_token_kl,
    token_logprobs_and_entropy,
)


def _sampled_batch(model, rows=96, prompt_len=4, length=6, seed=0):
    """Prompts of random tokens and completions sampled from the model at temperature 1."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (rows, prompt_len), generator=g)
    ids = prompt
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(model(input_ids=ids).logits[:, -1, :].float(), -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[: rows // 4, -2:] = 0  # some completions ended early: those tokens must not count
    return {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
            "completion_ids": ids[:, prompt_len:], "completion_mask": mask}


def test_exact_token_kl_is_the_categorical_kl():
    g = torch.Generator().manual_seed(1)
    before, after = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    dist = torch.distributions.Categorical
    per_token = torch.distributions.kl_divergence(dist(logits=before), dist(logits=after))
    expected = per_token[mask.bool()].mean()
    assert float(exact_token_kl(before, after, mask)) == pytest.approx(float(expected), rel=1e-5)
    assert float(exact_token_kl(before, before, mask)) == pytest.approx(0.0, abs=1e-6)


def test_probe_estimate_equals_the_exact_kl_of_an_optimizer_step(tiny_gpt2_dir):
    """The k3 estimate on sampled tokens vs the exact vocabulary KL on the same prefixes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    batch = _sampled_batch(model)
    args = tuple(batch[k] for k in PolicyProbe.KEYS)
    with torch.no_grad():
        logits_before = completion_logits(model.eval(), *args)
    model.train()  # the probe measures with dropout off and restores the flag
    probe = PolicyProbe(model, batch)
    assert model.training
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # one policy-gradient-like step: raise the log-probability of the sampled tokens
    logp, _ = token_logprobs_and_entropy(completion_logits(model, *args), batch["completion_ids"])
    (-(logp * batch["completion_mask"]).sum() / batch["completion_mask"].sum()).backward()
    opt.step()
    measured = probe.after()
    with torch.no_grad():
        logits_after = completion_logits(model.eval(), *args)
    exact = float(exact_token_kl(logits_before, logits_after, batch["completion_mask"]))
    assert exact > 1e-4  # the step moved the policy measurably
    # the estimate's only error is which tokens were drawn at each prefix (4 per prefix, ~500 prefixes)
    assert measured["policy_kl"] == pytest.approx(exact, rel=0.15)
    # while k3 on the completion tokens themselves, which the step was computed from, is biased
    lb, entropy = token_logprobs_and_entropy(logits_before, batch["completion_ids"])
    la, _ = token_logprobs_and_entropy(logits_after, batch["completion_ids"])
    assert float(sampled_token_kl(lb, la, batch["completion_mask"])) > 2 * exact
    m = batch["completion_mask"].bool()
    assert measured["entropy"] == pytest.approx(float(entropy[m].mean()), rel=1e-4)


def test_probe_reads_zero_without_a_step(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    batch = _sampled_batch(model, rows=8)
    assert PolicyProbe.applies_to(batch) and not PolicyProbe.applies_to({"input_ids": batch["prompt_ids"]})
    assert PolicyProbe(model, batch).after()["policy_kl"] == pytest.approx(0.0, abs=1e-6)


def test_text_probe_batch_reads_the_prompts_own_prefixes(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    from adaptiverl.signals.policy import text_probe_batch

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batch = text_probe_batch(["Return the value of the object.", "A list", ""], tokenizer, max_tokens=6)
    assert PolicyProbe.applies_to(batch)
    assert batch["prompt_ids"].shape == (2, 1) and batch["completion_ids"].shape == (2, 6)
    assert batch["completion_mask"][1].sum() < batch["completion_mask"][0].sum()  # the short one is padded
    assert text_probe_batch(["", "  "], tokenizer) is None
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert PolicyProbe(model, batch).after()["policy_kl"] == pytest.approx(0.0, abs=1e-6)
