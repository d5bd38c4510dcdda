"""The Online controller's fast path equals its slow reference twin (features and learning signal).

:mod:`adaptiverl.controllers.online_reference` recomputes, one tensor at a time with Python floats,
what :class:`~adaptiverl.controllers.online.OnlineController` computes batched on the device. Over
a short training run with rewards (exploration, the reward finite difference), a known horizon
(the anneal) and two param groups with their own tunables, every step's feature matrix, learning
signal, gate, brake and reward step must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch

from adaptiverl.controllers.online import GROUP_TUNABLES, StepInputs
from adaptiverl.controllers.online_reference import reference_features
from adaptiverl.optim.online import OnlineAdamW, OnlineRMSProp, OnlineSGD

MEMORY = {OnlineSGD: "momentum_buffer", OnlineRMSProp: "momentum_buffer", OnlineAdamW: "exp_avg"}


def _inputs(opt) -> StepInputs:
    params = [p for g in opt.param_groups for p in g["params"]]
    return StepInputs(rows=list(range(len(params))), grads=[p.grad for p in params], params=params,
                      memories=[opt.state[p].get(MEMORY[type(opt)]) for p in params],
                      maximize=[g["maximize"] for g in opt.param_groups],
                      tunables=tuple(tuple(float(g[k]) for k in GROUP_TUNABLES) for g in opt.param_groups),
                      base_knobs=[[0.0] * len(opt.KNOBS) for _ in opt.param_groups], progress=opt.progress)


@pytest.mark.parametrize("cls", [OnlineSGD, OnlineRMSProp, OnlineAdamW], ids=lambda c: c.__name__)
def test_fast_features_and_signal_equal_the_reference_twin(cls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    params = list(model.parameters())
    kwargs = {"momentum": 0.9} if cls is not OnlineAdamW else {}
    # lr small for the task: consecutive gradients agree, the t-statistics grow and the gate opens
    opt = cls([{"params": params[:2]}, {"params": params[2:], "hypergrad_weight": 0.7, "reward_weight": 2.0}],
              lr=1e-3 if cls is OnlineSGD else 1e-4, total_steps=40, feature_sample_size=256, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 12, generator=gen)
    y = x @ torch.randn(12, 3, generator=gen)
    seen = {"gate": 0.0, "reward_step": 0.0, "features": 0}
    for step in range(30):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.observe(loss=loss, reward=-loss.item() + 0.01 * (step % 3))
        online = opt.online_controller
        if online.state is not None:
            inputs = _inputs(opt)
            tunables = [dict(zip(GROUP_TUNABLES, inputs.tunables[int(gi)], strict=True))
                        for gi in online.state.group_of_row]
            ref = reference_features(online, opt.signals, inputs.grads, inputs.params, inputs.memories,
                                     inputs.maximize, tunables, inputs.progress)
            fast = copy.deepcopy(online)  # the stages advance the state they read
            state = fast.state
            device = state.counts.device
            with torch.no_grad():
                per_row = fast.row_tunables(inputs.tunables, None, device)
                feats = fast.features(inputs, state.rows, None, state.group_of_row, device)
                sig = fast.learning_signal(opt.signals, feats, state.rows, per_row, inputs.progress)
                x_fast = fast.feature_matrix(opt.signals, feats, sig, state.rows, inputs.progress)
            torch.testing.assert_close(x_fast.double(), torch.tensor([r["features"] for r in ref], dtype=torch.float64),
                                       rtol=1e-4, atol=1e-5)
            for key in ("signal", "gate", "brake", "reward_step"):
                torch.testing.assert_close(getattr(sig, key).double(),
                                           torch.tensor([r[key] for r in ref], dtype=torch.float64),
                                           rtol=1e-4, atol=1e-5, msg=lambda m, k=key, t=step: f"{k} at step {t}: {m}")
            for knob, values in feats.knob_cos.items():
                torch.testing.assert_close(values.double(), torch.tensor([r["knob_cos"][knob] for r in ref],
                                                                         dtype=torch.float64), rtol=1e-4, atol=1e-5)
            seen["gate"] = max(seen["gate"], float(sig.gate.max()))
            seen["reward_step"] = max(seen["reward_step"], float(sig.reward_step.abs().max()))
            seen["features"] += 1
        opt.step()
    assert seen["features"] == 29
    assert seen["gate"] > 0.0, "the run never opened the gate: the comparison missed the signal path"
