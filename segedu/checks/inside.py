"""Checks for notebook 09: looking inside."""
__all__: list[str] = []
