"""adaptiverl: optimizers whose hyperparameters adapt online to loss and reward.

Data flows one way: signals -> controllers -> appliers (optimizers, wrappers,
schedulers) -> trainer integration. The core (signals, controllers, optim)
needs torch alone; rewards and the trainer integration import transformers/TRL
only when used. Public names are imported lazily.
"""

from __future__ import annotations

from adaptiverl._lazy import lazy_exports
from adaptiverl.optim import _EXPORTS as _OPTIM_EXPORTS

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(_OPTIM_EXPORTS, "adaptiverl.optim"),
    "AdaptiveCallback": "adaptiverl.trainer.callback",
    **dict.fromkeys(("AdaptiveTrainer", "AdaptiveSFTTrainer", "AdaptiveGRPOTrainer", "AdaptiveRLOOTrainer"),
                    "adaptiverl.trainer.trainers"),
    "ScalarSignal": "adaptiverl.signals",
    "Signals": "adaptiverl.signals",
    "CompositeReward": "adaptiverl.rewards",
    "register_reward": "adaptiverl.rewards",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
