"""What every segmentation model in segedu looks like from the outside.

``model.encoder``: image ``[B, 3, H, W]`` -> list of feature maps ``[B, C_i, H/s_i, W/s_i]``.
``model.decoder``: that list -> logits ``[B, K, H/s, W/s]`` at the decoder's own stride ``s``.
``model(x)``: logits ``[B, K, H, W]``, bilinearly resized to the input (align_corners=False, as the
official code does before the loss and before the argmax at test time).

Activation checkpointing (``model.set_grad_checkpointing()``) works for every family without touching
their files: each encoder keeps its Transformer / MSCA blocks in ``nn.ModuleList`` attributes named
``blocks``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class SegmentationModel(nn.Module):
    """Encoder + decoder with input checks and resizing back to the input size.

    ``min_size`` is the smallest height/width the encoder accepts (e.g. one token at its
    coarsest stride); smaller inputs get a clear error instead of a cryptic conv failure.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int, min_size: int,
                 in_channels: int = 3):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = num_classes
        self.min_size = min_size
        self.in_channels = in_channels

    def check_input(self, x: torch.Tensor) -> None:
        name = getattr(self, "name", type(self).__name__)
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected an image batch [B, {self.in_channels}, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{name}: input {x.shape[-2]}x{x.shape[-1]} is smaller than the minimum "
                f"{self.min_size}x{self.min_size} this model can encode"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a float image tensor (normalised), got dtype {x.dtype}")

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's stride (what the loss should upsample, see segedu.losses)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))

    aux_weights: tuple[float, ...] = ()  # loss weights of auxiliary heads (SETR); none by default

    def forward_train(self, x: torch.Tensor) -> dict:
        """``{"main": logits, "aux": [auxiliary logits]}`` for the loss; models with aux heads override it."""
        return {"main": self.forward_logits(x), "aux": []}

    def encoder_blocks(self) -> list[nn.Module]:
        """Every block of every ``blocks`` list in the encoder (SegFormer, SegNeXt, Swin: per stage; ViT: one)."""
        return [block for name, blocks in self.encoder.named_modules()
                if isinstance(blocks, nn.ModuleList) and name.split(".")[-1] == "blocks" for block in blocks]

    def set_grad_checkpointing(self, enabled: bool = True) -> int:
        """Recompute each encoder block in the backward pass instead of storing its activations.

        Memory for activations drops from all the blocks' intermediates to their inputs, for about one
        more forward pass of the encoder. Each block's ``forward`` is replaced on the instance by one that
        runs the original under ``torch.utils.checkpoint`` (which replays the RNG, so dropout and
        stochastic depth draw the same values twice) when gradients are on; ``enabled=False`` restores
        it. Returns the number of blocks changed.
        """
        blocks = self.encoder_blocks()
        for block in blocks:
            block.__dict__.pop("forward", None)  # the class's own forward again
            if enabled:
                block.forward = _checkpointed(block.forward)
        return len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _checkpointed(forward):
    """``forward`` run under activation checkpointing when autograd records, as is otherwise."""
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run
