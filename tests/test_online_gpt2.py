"""End to end on a real (tiny, local) GPT-2: the Online optimizers train a transformers model."""

from __future__ import annotations

import pytest
import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "lr"), [(OnlineAdamW, 3e-3), (OnlineSGD, 0.1), (OnlineRMSProp, 1e-3)])
def test_online_optimizer_trains_tiny_gpt2(tiny_gpt2_dir, cls, lr):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from adaptiverl.tiny import python_corpus

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    ids = tok("\n".join(python_corpus()[:200]), return_tensors="pt").input_ids[0]
    batch = ids[: 8 * 64].view(8, 64)
    opt = cls(model.parameters(), lr=lr)
    losses = []
    for _ in range(25):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    tensors = opt.dynamics()["tensors"]
    assert len(tensors) == len(list(model.parameters()))
    # inside scale_bounds (1e-3, 1e3), and no faster than 1.1x up per step (x the warm-up-free
    # unknown horizon: no schedule)
    assert all(1e-3 * (1 - 1e-5) <= t["delta_scale"] <= 1.1 ** 25 for t in tensors)
    assert opt.format_dynamics().startswith(f"[{cls.__name__}] Step 25 dynamics:")
    assert all(torch.isfinite(p).all() for p in model.parameters())
