"""Learned reward: any transformers sequence-classification model (path or hub name).

* A single-logit model (a reward model trained with TRL's ``RewardTrainer``, see
  ``reward_models/``) gives its logit, times ``sign``.
* A multi-label classifier (sentiment, helpfulness, toxicity) gives the softmax probability
  (``output="prob"``; sigmoid if the config says ``multi_label_classification``) or the logit
  (``output="logit"``) of ``label`` (a name from ``config.id2label`` or an index), times
  ``sign``: ``sign=-1`` makes toxicity a penalty.

Texts are the completion alone or ``prompt + completion`` (``include_prompt=True``), encoded in
batches of ``batch_size`` and truncated to the model's maximum length. Models load once per
process and device and are never pickled.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptiverl.rewards.base import RewardFunction, check_model_ref, pick_device

_MODELS: dict[tuple[str, str], tuple[Any, Any]] = {}


def load_classifier(model: str, device: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a sequence-classification checkpoint, loaded once per process."""
    key = (model, device)
    if key not in _MODELS:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        net = AutoModelForSequenceClassification.from_pretrained(model).to(device).eval()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        if net.config.pad_token_id is None:
            net.config.pad_token_id = tok.pad_token_id
        _MODELS[key] = (net, tok)
    return _MODELS[key]


def max_model_length(net: Any, tok: Any) -> int:
    """The shorter of the tokenizer's and the position embeddings' limits."""
    limits = [tok.model_max_length if tok.model_max_length and tok.model_max_length < 1e9 else None,
              getattr(net.config, "max_position_embeddings", None), getattr(net.config, "n_positions", None)]
    return min((v for v in limits if v), default=512)


class ClassifierReward(RewardFunction):
    """Score of a sequence classifier for ``label``, times ``sign`` (see the module docstring)."""

    default_name = "learned"

    def __init__(self, model: str, label: str | int | None = None, sign: float = 1.0,
                 output: str = "prob", include_prompt: bool = False, batch_size: int = 16,
                 device: str | None = None, name: str | None = None) -> None:
        super().__init__(name)
        check_model_ref(model)
        if output not in ("prob", "logit"):
            raise ValueError(f"output must be 'prob' or 'logit', got {output!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.label, self.sign, self.output = model, label, float(sign), output
        self.include_prompt, self.batch_size, self.device = include_prompt, batch_size, device

    def _label_index(self, net: Any) -> int:
        num = net.config.num_labels
        if self.label is None:
            if num == 1:
                return 0
            raise ValueError(f"reward {self.__name__!r}: model {self.model!r} has {num} labels "
                             f"{list(net.config.id2label.values())}; choose one with label=")
        if isinstance(self.label, int):
            if not 0 <= self.label < num:
                raise ValueError(f"reward {self.__name__!r}: label index {self.label} out of range for "
                                 f"{num} labels")
            return self.label
        names = {str(v).lower(): int(k) for k, v in net.config.id2label.items()}
        if self.label.lower() not in names:
            raise ValueError(f"reward {self.__name__!r}: label {self.label!r} not among the model's labels "
                             f"{list(net.config.id2label.values())}")
        return names[self.label.lower()]

    @torch.inference_mode()
    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        device = pick_device(self.device)
        net, tok = load_classifier(self.model, device)
        idx = self._label_index(net)
        texts = [p + c for p, c in zip(prompts, completions, strict=True)] if self.include_prompt \
            else completions
        max_len = max_model_length(net, tok)
        multi = getattr(net.config, "problem_type", None) == "multi_label_classification"
        out: list[float | None] = []
        for start in range(0, len(texts), self.batch_size):
            enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                      truncation=True, max_length=max_len).to(device)
            logits = net(**enc).logits.float()
            if net.config.num_labels == 1 or self.output == "logit":
                values = logits[:, idx]
            elif multi:
                values = torch.sigmoid(logits[:, idx])
            else:
                values = torch.softmax(logits, dim=-1)[:, idx]
            out.extend((self.sign * values).cpu().tolist())
        return out
