"""Checks for notebook 07: training."""
__all__: list[str] = []
