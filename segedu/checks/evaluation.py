"""Checks for notebook 08: evaluation and inference."""
__all__: list[str] = []
