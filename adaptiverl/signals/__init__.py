"""Signals: running statistics of loss, reward and other scalars, shared by every controller.

Per-tensor statistics (the Online controller's sample, cosines, t-statistics) are in
:mod:`adaptiverl.signals.tensor_stats`, imported on use.
"""

from adaptiverl.signals.stats import ScalarSignal, Signals, to_float

__all__ = ["ScalarSignal", "Signals", "to_float"]
