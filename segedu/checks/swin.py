"""Checks for notebook 04: Swin and SSformer."""
__all__: list[str] = []
