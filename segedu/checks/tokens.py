"""Checks for notebook 01: pixels to tokens."""
__all__: list[str] = []
