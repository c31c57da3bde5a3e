"""Checks for notebook 03: ViT and the SETR decoders."""
__all__: list[str] = []
