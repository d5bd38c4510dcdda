"""Writes ``online_checkpoint_v1.pt``: the three Online optimizers' state dicts after 12 steps, as
the code before the controller moved to ``controllers/online.py`` (commit 1564c68) wrote them, and
the parameters and dynamics that code produced over the 5 steps after. ``tests/test_online_checkpoint.py``
loads it into today's code and checks the continuation is the same. Run once; do not regenerate
(the point is that the file comes from the old code)."""

from __future__ import annotations

from pathlib import Path

import torch

from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

OUT = Path(__file__).with_name("online_checkpoint_v1.pt")
SAVED_AT, CONTINUE = 12, 5


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))


def make(cls, params):
    kwargs = {"lr": 0.01, "weight_decay": 0.01, "total_steps": 40}
    if cls is not OnlineAdamW:
        kwargs["momentum"] = 0.9
    params = list(params)
    return cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], **kwargs)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(32, 6, generator=gen), torch.randn(32, 2, generator=gen)


def run(net, opt, start: int, stop: int) -> None:
    for step in range(start, stop):
        x, y = batch(step)
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        # odd steps feed the trainer's grad norm, even ones leave the finite check to the optimizer
        opt.observe(loss=loss, reward=-loss.item(), grad_norm=1.0 if step % 2 else None)
        opt.step()


def main() -> None:
    blob = {}
    for cls in (OnlineSGD, OnlineRMSProp, OnlineAdamW):
        net = model()
        opt = make(cls, net.parameters())
        run(net, opt, 0, SAVED_AT)
        entry = {"model": {k: v.clone() for k, v in net.state_dict().items()}, "optimizer": opt.state_dict()}
        entry = torch.load(_roundtrip(entry), weights_only=True)
        run(net, opt, SAVED_AT, SAVED_AT + CONTINUE)
        entry["expected_params"] = [p.detach().clone() for p in net.parameters()]
        entry["expected_summary"] = opt.dynamics()["summary"]
        blob[cls.__name__] = entry
    torch.save(blob, OUT)


def _roundtrip(obj):
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


if __name__ == "__main__":
    main()
