"""Checks for notebook 06: SegNeXt."""
__all__: list[str] = []
