"""adaptiverl: optimizers whose hyperparameters adapt online to loss and reward.

Data flows one way: signals -> controllers -> appliers (optimizers, wrappers,
schedulers) -> trainer integration. The core (signals, controllers, optim)
needs torch alone.
"""

from adaptiverl.signals import ScalarSignal, Signals

__version__ = "0.1.0"

__all__ = ["ScalarSignal", "Signals", "__version__"]
