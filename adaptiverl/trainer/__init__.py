"""Trainer integration: the HF/TRL callback, the JSON config and the training entry point."""
