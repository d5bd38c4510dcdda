"""Trainer integration: the HF/TRL callback, the JSON config and the training entry point.

``from adaptiverl.trainer import AdaptiveCallback, AdaptiveGRPOTrainer, train`` works; each name is
imported on first use, so that reading a config (``adaptiverl.trainer.config``) loads no trainer.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AdaptiveCallback": "adaptiverl.trainer.callback",
    "AdaptiveTrainer": "adaptiverl.trainer.trainers",
    "AdaptiveSFTTrainer": "adaptiverl.trainer.trainers",
    "AdaptiveGRPOTrainer": "adaptiverl.trainer.trainers",
    "AdaptiveRLOOTrainer": "adaptiverl.trainer.trainers",
    "TrainConfig": "adaptiverl.trainer.config",
    "load_config": "adaptiverl.trainer.config",
    "train": "adaptiverl.trainer.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
