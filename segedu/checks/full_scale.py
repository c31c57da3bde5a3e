"""Checks for notebook 10: going full scale."""
__all__: list[str] = []
