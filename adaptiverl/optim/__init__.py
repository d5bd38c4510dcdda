"""Appliers: the optimizers, wrappers and schedulers a user holds."""
