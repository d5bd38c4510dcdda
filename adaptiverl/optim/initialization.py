"""Model initialisation utilities (kept out of the optimizers, which only update parameters).

:func:`sample_from_prior_` replaces every weight tensor (``dim >= 2``) by a draw from the
zero-mean Gaussian prior ``N(0, prior_std^2 / fan_in)``, ``fan_in = p[0].numel()`` (inputs per
output unit: ``in_features`` for ``nn.Linear``, ``in_channels * kernel size`` for convolutions):
the prior of a Bayesian neural network whose scaling keeps the pre-activation variance independent
of the width (Neal 1996, "Bayesian Learning for Neural Networks", ch. 2). What is Bayesian about it
is only that: a sample from that prior, no posterior. Vectors (biases, norm scales) keep their
values. EnhancedSGD calls it for the seed's ``bayesian_init=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def sample_from_prior_(params: Iterable[Tensor], prior_std: float = 1.0, *, seed: int = 0) -> None:
    """In place, every ``dim >= 2`` tensor of ``params`` <- a draw from ``N(0, prior_std^2 / fan_in)``.

    Draws come from one ``torch.Generator`` per device seeded by ``seed``: equal seeds, equal weights.
    """
    if not prior_std > 0.0:
        raise ValueError(f"prior_std must be > 0, got {prior_std}")
    generators: dict[str, torch.Generator] = {}
    for p in params:
        if p.dim() < 2:
            continue
        gen = generators.get(str(p.device))
        if gen is None:
            gen = generators[str(p.device)] = torch.Generator(device=p.device).manual_seed(seed)
        sample = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        p.copy_(sample.mul_(prior_std / math.sqrt(p[0].numel())))
