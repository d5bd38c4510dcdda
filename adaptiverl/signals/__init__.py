"""Signals: running statistics of loss, reward and other scalars, shared by every controller."""

from adaptiverl.signals.stats import ScalarSignal, Signals, to_float

__all__ = ["ScalarSignal", "Signals", "to_float"]
