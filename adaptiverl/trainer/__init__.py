"""Trainer integration: the HF/TRL callback, the JSON config and the training entry point.

``from adaptiverl.trainer import AdaptiveCallback, AdaptiveGRPOTrainer, train`` works; each name is
imported on first use, so that reading a config (``adaptiverl.trainer.config``) loads no trainer.
"""

from __future__ import annotations

from adaptiverl._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("AdaptiveTrainer", "AdaptiveSFTTrainer", "AdaptiveGRPOTrainer", "AdaptiveRLOOTrainer"),
                    "adaptiverl.trainer.trainers"),
    **dict.fromkeys(("TrainConfig", "load_config"), "adaptiverl.trainer.config"),
    "AdaptiveCallback": "adaptiverl.trainer.callback",
    "train": "adaptiverl.trainer.run",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
