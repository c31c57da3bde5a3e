"""Checks for notebook 02: self-attention."""
__all__: list[str] = []
