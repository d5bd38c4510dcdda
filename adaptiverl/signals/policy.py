"""RL signals: how far one optimizer step moved the policy, and the policy's entropy.

What RL practitioners steer the learning rate by (rsl_rl, rl_games, skrl; Schulman et al. 2017,
PPO's adaptive-KL variant) is the **policy change per update**: the KL divergence between the
policy before and after an optimizer step, measured on the states the step learned from. For a
language model the states are the prompt + completion prefixes of the step's batch and the actions
its sampled completion tokens:

    KL_t = mean over completion tokens of  KL(pi_before(. | prefix) || pi_after(. | prefix))

:func:`exact_token_kl` computes it over the whole vocabulary (needs both full logit tensors, too
large to keep for a real vocabulary); :func:`sampled_token_kl` estimates it from log-probabilities
of sampled tokens only, with Schulman's ``k3`` estimator ``E[r - 1 - log r]``,
``r = pi_after(a) / pi_before(a)``: unbiased for tokens drawn from ``pi_before`` *independently of
the update*, never negative. The completion tokens themselves are not such draws: the step was
computed from them and raised or lowered exactly their probabilities (on a tiny GPT-2 the k3 on
the completion tokens read 3.4x the exact KL). So :class:`PolicyProbe`, what the trainers use,
draws ``PROBE_DRAWS`` fresh tokens from ``pi_before`` at every completion prefix in its
before-step forward (one no-grad forward of one micro-batch), keeps their log-probabilities
(``(B, T, PROBE_DRAWS)`` floats, not the vocabulary), and, called after the step, returns the k3
estimate from a second forward. ``tests/test_policy_signals.py`` checks it against the exact value
on a tiny GPT-2.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F


def completion_logits(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """``(B, T, V)`` logits (divided by ``temperature``) that predicted each completion token."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    length = completion_ids.shape[1]
    return logits[:, -length - 1:-1, :].float() / temperature


def token_logprobs_and_entropy(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token ``log pi(token)`` and the entropy of ``pi(. | prefix)``, both ``(B, T)``."""
    logp = F.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (0 when there are none)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def exact_token_kl(logits_before: Tensor, logits_after: Tensor, mask: Tensor) -> Tensor:
    """``KL(pi_before || pi_after)`` summed over the vocabulary, averaged over the masked tokens."""
    before, after = F.log_softmax(logits_before, -1), F.log_softmax(logits_after, -1)
    return masked_mean((before.exp() * (before - after)).sum(-1), mask)


def sampled_token_kl(logp_before: Tensor, logp_after: Tensor, mask: Tensor) -> Tensor:
    """The ``k3`` estimate of ``KL(pi_before || pi_after)`` from sampled tokens' log-probabilities.

    ``E_{a ~ pi_before}[r - 1 - log r]`` with ``log r = logp_after - logp_before`` (Schulman 2020,
    "Approximating KL divergence"): unbiased for tokens sampled from ``pi_before``, >= 0 per token.
    """
    log_ratio = (logp_after - logp_before).clamp(-20.0, 20.0)
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


#: Fresh tokens drawn per completion prefix for the KL estimate.
PROBE_DRAWS = 4


class PolicyProbe:
    """Measures one optimizer step's policy change on a batch of sampled completions.

    Built before the step (one no-grad forward: the sampled tokens' log-probabilities and the
    policy entropy); :meth:`after` runs after the step (a second forward) and returns
    ``{"policy_kl": ..., "entropy": ...}``. Both forwards run with dropout off (the module's
    training flag is restored), so the KL is the parameters' change, not dropout noise.

    Args:
        model: the policy (any causal LM returning ``.logits``).
        inputs: a batch holding ``prompt_ids``, ``prompt_mask``, ``completion_ids`` and
            ``completion_mask`` (what TRL's GRPO and RLOO trainers hand ``training_step``).
        temperature: the sampling temperature the completions were drawn at.
    """

    KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")

    def __init__(self, model: Any, inputs: dict[str, Any], temperature: float = 1.0, seed: int = 0) -> None:
        self.model = model
        device = next(model.parameters()).device
        self.batch = tuple(inputs[k].to(device) for k in self.KEYS)
        self.temperature = float(temperature)
        logp = self._log_probs()
        generator = torch.Generator(device=logp.device).manual_seed(seed)
        flat = logp.exp().reshape(-1, logp.shape[-1])
        self.draws = torch.multinomial(flat, PROBE_DRAWS, replacement=True, generator=generator) \
            .reshape(*logp.shape[:2], PROBE_DRAWS)
        self.logp_before = logp.gather(-1, self.draws)
        entropy = -(logp.exp() * logp).sum(-1)
        self.entropy = float(masked_mean(entropy, self.batch[3]))

    @classmethod
    def applies_to(cls, inputs: Any) -> bool:
        """Whether ``inputs`` is a batch of sampled completions this probe can measure."""
        return isinstance(inputs, dict) and all(isinstance(inputs.get(k), Tensor) for k in cls.KEYS)

    @torch.no_grad()
    def _log_probs(self) -> Tensor:
        """``(B, T, V)`` log-probabilities at the completion prefixes, dropout off."""
        was_training = self.model.training
        self.model.eval()
        try:
            logits = completion_logits(self.model, *self.batch, temperature=self.temperature)
        finally:
            self.model.train(was_training)
        return F.log_softmax(logits, dim=-1)

    def after(self) -> dict[str, float]:
        """The policy change since construction (the step in between) and the entropy before it.

        Averaged over ranks when ``torch.distributed`` is initialised (each rank probes its own
        micro-batch; every rank must call this in the same step), so every replica's optimizer sees
        the same values and the replicas stay identical.
        """
        logp_after = self._log_probs().gather(-1, self.draws)
        mask = self.batch[3].unsqueeze(-1).expand_as(self.draws)
        values = torch.stack([sampled_token_kl(self.logp_before, logp_after, mask).float(),
                              torch.tensor(self.entropy, device=logp_after.device)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
            values = values / dist.get_world_size()
        kl, entropy = values.tolist()
        return {"policy_kl": kl, "entropy": entropy}


def text_probe_batch(texts: list[str], tokenizer: Any, rows: int = 8, max_tokens: int = 32) -> dict[str, Tensor] | None:
    """A fixed :class:`PolicyProbe` batch from text: each of the first ``rows`` texts, its first
    token as the prompt and the rest (at most ``max_tokens``) as the "completion" whose prefixes
    the probe reads. For trainers whose sampled batches no public hook shows (a stock GRPO trainer
    under ``AdaptiveCallback``): the policy change is then measured at the training prompts' own
    prefixes instead of the step's completions. None when there is no usable text."""
    texts = [t for t in texts[:rows] if isinstance(t, str) and t.strip()]
    if not texts or not callable(tokenizer):
        return None
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens + 1, padding="max_length",
                        return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    if ids.shape[1] < 2 or int(mask[:, 1:].sum()) == 0:
        return None
    return {"prompt_ids": ids[:, :1], "prompt_mask": mask[:, :1],
            "completion_ids": ids[:, 1:], "completion_mask": mask[:, 1:]}

