"""Checks of notebook 01 (pixels to tokens): each passes on segedu's reference and names planted mistakes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from segedu import checks
from segedu.models.setr import resize_pos_embed

from check_contract import Stub, assert_passes_quietly, assert_stub_passes_through, fails, stub


def patchify(x, p):
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)


class ViTEmbedding(nn.Module):
    """The embedding as segedu's VisionTransformer does it; ``order`` plants the classic mistakes."""

    def __init__(self, in_channels, embed_dim, patch_size, grid, order="ok"):
        super().__init__()
        self.order = order
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim))

    def forward(self, x):
        pattern = "b d h w -> b (w h) d" if self.order == "column_major" else "b d h w -> b (h w) d"
        tokens = rearrange(self.patch_embed(x), pattern)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if self.order == "cls_last":
            return torch.cat([tokens, cls], 1) + self.pos_embed
        if self.order == "cls_without_position":
            return torch.cat([cls, tokens + self.pos_embed[:, 1:]], 1)
        if self.order == "no_positions":
            return torch.cat([cls, tokens], 1)
        return torch.cat([cls, tokens], 1) + self.pos_embed


def with_mistake(order):
    return lambda *args: ViTEmbedding(*args, order=order)


CASES = [
    (checks.check_patchify, patchify, stub, "check_patchify"),
    (checks.check_vit_embedding, ViTEmbedding, Stub, "check_vit_embedding"),
    (checks.check_resize_pos_embed, resize_pos_embed, stub, "check_resize_pos_embed"),
]


@pytest.mark.parametrize("check,reference,unsolved,name", CASES)
def test_reference_passes_quietly_and_leaves_the_global_rng_alone(check, reference, unsolved, name, capsys):
    assert_passes_quietly(capsys, name, check, reference)


@pytest.mark.parametrize("check,reference,unsolved,name", CASES)
def test_unsolved_exercises_raise_not_implemented(check, reference, unsolved, name):
    assert_stub_passes_through(check, unsolved)


def test_the_embedding_check_matches_segedus_vision_transformer():
    """The check's expected tokens are what segedu's ViT feeds its first block (block replaced by identity)."""
    from segedu.checks.tokens import _vit_embedding, _vit_reference

    vit = _vit_reference(3, 8, 4, (3, 5), seed=0)
    vit.blocks[0] = nn.Identity()
    x = torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        tokens = _vit_embedding(vit, x)
        (fmap,) = vit(x)
    torch.testing.assert_close(rearrange(fmap, "b d h w -> b (h w) d"), tokens[:, 1:])


def test_patchify_mistakes():
    fails(checks.check_patchify, lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p),
          r"channels come first, \(c p1 p2\)")
    fails(checks.check_patchify, lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p),
          "column by column")
    fails(checks.check_patchify, lambda x, p: x.reshape(x.shape[0], -1, p * p * x.shape[1]), "reshaped")
    fails(checks.check_patchify, lambda x, p: F.unfold(x, p, stride=p), r"\[B, p\*p\*C, N\]")
    fails(checks.check_patchify, lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b h w (p1 p2 c)", p1=p, p2=p),
          "flatten the patch grid")


def test_vit_embedding_mistakes():
    fails(checks.check_vit_embedding, with_mistake("cls_last"), "appended at the end")
    fails(checks.check_vit_embedding, with_mistake("cls_without_position"), "cls token gets no position")
    fails(checks.check_vit_embedding, with_mistake("no_positions"), "positions are not added")
    fails(checks.check_vit_embedding, with_mistake("column_major"), "column by column")

    class NamedProj(ViTEmbedding):  # timm's name patch_embed.proj instead of segedu's patch_embed
        def __init__(self, c, d, p, grid):
            super().__init__(c, d, p, grid)
            self.patch_embed = nn.Sequential()
            self.patch_embed.proj = nn.Conv2d(c, d, p, stride=p)
    fails(checks.check_vit_embedding, NamedProj, r"missing patch_embed.weight(.|\n)*Hint: The patch projection",
          hint=True)


def _resize(mode="bilinear", align_corners=False, keep_cls=True, fold="ok"):
    from segedu.checks.tokens import _resize as planted

    return lambda pos, gf, gt: planted(pos, gf, gt, mode=mode, align_corners=align_corners, keep_cls=keep_cls,
                                       fold=fold)


def test_resize_pos_embed_mistakes():
    fails(checks.check_resize_pos_embed, _resize(align_corners=True), "align_corners=True")
    fails(checks.check_resize_pos_embed, _resize(mode="bicubic"), "bicubic")
    fails(checks.check_resize_pos_embed, _resize(keep_cls=False), "cls position was interpolated")
    fails(checks.check_resize_pos_embed, _resize(fold="reshape"), "without moving D first")
    fails(checks.check_resize_pos_embed, _resize(fold="swapped"), "height and width are swapped")
    fails(checks.check_resize_pos_embed, lambda pos, gf, gt: resize_pos_embed(pos, gf, gt)[:, 1:],
          "cls position is missing")
