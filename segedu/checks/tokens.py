"""Checks for notebook 01: pixels to tokens (patchify, the ViT/SETR embedding, resizing positions)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ._core import teaches, _build, _copy_weights, _diagnose, _expect_tensor, _fail, _passed, _run, _seeded

__all__ = ["check_patchify", "check_vit_embedding", "check_resize_pos_embed"]


# ----------------------------------------------------------------------------------------------
# patchify: the image as a sequence of flattened patches (SETR Sec. 3.1, ViT Eq. 1)
# ----------------------------------------------------------------------------------------------
@teaches("ViT (Dosovitskiy et al. 2021) Sec. 3.1, Eq. 1: the image as N patches of P*P*C numbers; "
         "segedu.models.setr.VisionTransformer.patch_embed")
def check_patchify(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(x [B, C, H, W], patch_size) -> [B, (H/p)(W/p), p*p*C]``.

    Patches in row-major order (patch n at row n // (W/p), column n % (W/p)); inside a patch the
    numbers run over (row p1, column p2, channel c), channel fastest: ``(p1 p2 c)``.
    """
    where = "check_patchify"
    cases = [((2, 3, 8, 12), 4), ((1, 2, 6, 4), 2), ((1, 3, 32, 48), 16)]
    gen = torch.Generator().manual_seed(100)
    for shape, p in cases:
        x = torch.randn(shape, generator=gen)
        out = _run(where, fn, x.clone(), p)
        expected = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        B, C, H, W = shape
        h, w = H // p, W // p
        if isinstance(out, torch.Tensor) and out.ndim in (4, 5) and out.shape[0] == B:
            _fail(where, f"output shape {list(out.shape)}: flatten the patch grid into one sequence axis and each "
                         f"patch into one vector, [B, N, p*p*C] = {list(expected.shape)}")
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, p * p * C, h * w):
            _fail(where, f"output shape {list(out.shape)} = [B, p*p*C, N] (F.unfold's layout); the tokens go on "
                         f"the middle axis: [B, N, p*p*C] = {list(expected.shape)}")
        out = _expect_tensor(where, out, tuple(expected.shape),
                             f"For a {H}x{W} image and {p}x{p} patches: N = ({H}/{p})*({W}/{p}) = {h * w} patches "
                             f"of {p}*{p}*{C} = {p * p * C} numbers.")
        candidates = [
            ("inside each patch the channels come first, (c p1 p2) (the order of F.unfold and of a Conv2d weight); "
             "this course uses (p1 p2 c): rearrange(x, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)').",
             lambda: rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)),
            ("the patches are numbered column by column, (w h); number them row by row, (h w), so that patch n "
             "sits at row n // (W/p), column n % (W/p).",
             lambda: rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p)),
            ("inside each patch rows and columns are swapped, (p2 p1 c); flatten a patch row by row: (p1 p2 c).",
             lambda: rearrange(x, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=p, p2=p)),
            ("the image was reshaped to [B, N, p*p*C] directly; a reshape does not cut out squares, it takes "
             "consecutive numbers of the same rows. Use rearrange (or permute before reshape).",
             lambda: x.reshape(B, h * w, p * p * C)),
            ("the channels were moved last and the result reshaped; the patch grid axes must be split first "
             "('(h p1) (w p2)') so that each token holds one p x p square.",
             lambda: x.permute(0, 2, 3, 1).reshape(B, h * w, p * p * C)),
        ]
        _diagnose(f"{where} ({H}x{W} image, patch {p})", out, expected, candidates,
                  "Expected rearrange(x, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)').", rtol=0, atol=0)
    _passed(where, len(cases), "rearrange 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'")


# ----------------------------------------------------------------------------------------------
# The ViT embedding of SETR's encoder: patch conv, cls token, learned positions
# ----------------------------------------------------------------------------------------------
def _vit_reference(in_channels: int, embed_dim: int, patch_size: int, grid: tuple[int, int], seed: int):
    """segedu's VisionTransformer (one small block) with its embedding parameters set on a seed."""
    from ..models.setr import VisionTransformer

    vit = VisionTransformer(embed_dim, depth=1, num_heads=1, patch_size=patch_size, out_layers=(1,),
                            img_size=(grid[0] * patch_size, grid[1] * patch_size), in_channels=in_channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fan_in = in_channels * patch_size * patch_size
        vit.patch_embed.weight.copy_(torch.randn(vit.patch_embed.weight.shape, generator=gen) / fan_in ** 0.5)
        vit.patch_embed.bias.copy_(0.2 * torch.randn(embed_dim, generator=gen))
        vit.cls_token.copy_(torch.randn(vit.cls_token.shape, generator=gen))
        vit.pos_embed.copy_(torch.randn(vit.pos_embed.shape, generator=gen))
    return vit


def _vit_embedding(vit, x: torch.Tensor) -> torch.Tensor:
    """The tokens segedu's ``VisionTransformer`` feeds its first block, for an image of its own grid."""
    tokens = rearrange(vit.patch_embed(x), "b d h w -> b (h w) d")
    tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    return tokens + vit.pos_embed


@teaches("ViT Sec. 3.1, Eq. 1 (cls token, position embeddings) and SETR Sec. 3.2 (image to sequence); "
         "segedu.models.setr.VisionTransformer.forward")
def check_vit_embedding(cls: type) -> None:
    """``cls(in_channels, embed_dim, patch_size, grid)``; ``forward(x [B, C, g0*p, g1*p]) -> [B, 1 + N, D]``.

    Parameters named as in ``segedu.models.setr.VisionTransformer``: ``patch_embed`` (Conv2d, kernel =
    stride = patch_size), ``cls_token`` [1, 1, D], ``pos_embed`` [1, 1 + g0*g1, D]. The cls token goes
    first, then the patch tokens in row-major order, then the positions are added to all of them.
    """
    where = "check_vit_embedding"
    hints = {"patch_embed": "The patch projection is `patch_embed` = nn.Conv2d(in_channels, embed_dim, "
                            "kernel_size=patch_size, stride=patch_size).",
             "cls_token": "`cls_token` = nn.Parameter(torch.zeros(1, 1, embed_dim)).",
             "pos_embed": "`pos_embed` = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim)): one "
                          "position per patch plus one for the cls token."}
    # (in_channels, embed_dim, patch_size, grid), batch: non-square grids, several patch sizes
    cases = [((3, 8, 4, (3, 5)), 2), ((2, 12, 2, (4, 2)), 1), ((3, 16, 16, (2, 3)), 2)]
    for i, (args, B) in enumerate(cases):
        C, D, p, (g0, g1) = args
        with _seeded(110 + i):
            vit = _vit_reference(C, D, p, (g0, g1), 110 + i)
            ref = torch.nn.Module()  # a container holding exactly the embedding's parameters, by segedu's names
            for name in ("patch_embed", "cls_token", "pos_embed"):
                setattr(ref, name, getattr(vit, name))
            mine = _build(cls, args, where)
            _copy_weights(mine, ref, where, hints)
            x = torch.randn(B, C, g0 * p, g1 * p)
        out = _run(where, mine, x)
        with torch.no_grad():
            expected = _vit_embedding(vit, x)
        N = g0 * g1
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, N, D):
            _fail(where, f"output shape {list(out.shape)}: {N} patch tokens but no cls token; prepend it, "
                         f"[B, 1 + N, D] = {list(expected.shape)}")
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            _fail(where, f"output shape {list(out.shape)} is still a map; flatten it to tokens "
                         f"'b d h w -> b (h w) d' and prepend the cls token: {list(expected.shape)}")
        out = _expect_tensor(where, out, tuple(expected.shape))
        with torch.no_grad():
            conv = vit.patch_embed(x)
            cls_tok = vit.cls_token.expand(B, -1, -1)
            pos = vit.pos_embed
            patches = rearrange(conv, "b d h w -> b (h w) d")
            candidates = [
                ("the positions are not added.", lambda: torch.cat([cls_tok, patches], 1)),
                ("the cls token is appended at the end; it goes first (position 0), before the patch tokens.",
                 lambda: torch.cat([patches, cls_tok], 1) + pos),
                ("the cls token gets no position: add pos_embed to the whole sequence [cls, patches], "
                 "pos_embed[:, 0] belongs to the cls token.",
                 lambda: torch.cat([cls_tok, patches + pos[:, 1:]], 1)),
                ("the patch tokens are numbered column by column ((w h) order); use row-major order "
                 "rearrange(x, 'b d h w -> b (h w) d') so that position n is patch (n // w, n % w).",
                 lambda: torch.cat([cls_tok, rearrange(conv, "b d h w -> b (w h) d")], 1) + pos),
                ("the conv output was reshaped to [B, N, D] without moving the channels last; use "
                 "rearrange(x, 'b d h w -> b (h w) d') (or flatten(2).transpose(1, 2)).",
                 lambda: torch.cat([cls_tok, conv.reshape(B, N, D)], 1) + pos),
            ]
        _diagnose(f"{where} (C={C}, D={D}, patch {p}, grid {g0}x{g1})", out, expected, candidates,
                  "Expected cat([cls_token, rearrange(patch_embed(x), 'b d h w -> b (h w) d')]) + pos_embed.")
    _passed(where, len(cases), "the embedding of segedu.models.setr.VisionTransformer")


# ----------------------------------------------------------------------------------------------
# resize_pos_embed: positions for another grid
# ----------------------------------------------------------------------------------------------
def _resize(pos: torch.Tensor, grid_from, grid_to, *, mode: str = "bilinear", align_corners: bool = False,
            keep_cls: bool = True, fold: str = "ok") -> torch.Tensor:
    """The resize written out, with switches that reproduce the classic mistakes."""
    (h, w), D = grid_from, pos.shape[-1]
    cls_pos, grid = (pos[:, :1], pos[:, 1:]) if keep_cls else (None, pos)
    if not keep_cls:  # the whole sequence, cls included, treated as a 1 x (1 + h w) strip
        strip = rearrange(pos, "b n d -> b d 1 n")
        strip = F.interpolate(strip, size=(1, 1 + grid_to[0] * grid_to[1]), mode=mode, align_corners=align_corners)
        return rearrange(strip, "b d 1 n -> b n d")
    if fold == "ok":
        m = rearrange(grid, "b (h w) d -> b d h w", h=h, w=w)
    elif fold == "reshape":
        m = grid.reshape(1, D, h, w)
    else:  # "swapped": the row-major sequence read as a (w, h) grid
        m = rearrange(grid, "b (w h) d -> b d h w", h=h, w=w)
    kw = {} if mode == "nearest" else {"align_corners": align_corners}
    m = F.interpolate(m, size=tuple(grid_to), mode=mode, **kw)
    out = rearrange(m, "b d h w -> b (h w) d") if fold != "swapped" else rearrange(m, "b d h w -> b (w h) d")
    return torch.cat([cls_pos, out], dim=1)


@teaches("ViT Sec. 3.2 (2-D interpolation of the position embeddings) and the official SETR loader "
         "(docs/architectures.md §1.1); segedu.models.setr.resize_pos_embed")
def check_resize_pos_embed(fn: Callable) -> None:
    """``fn(pos_embed [1, 1 + h*w, D], grid_from (h, w), grid_to (h', w')) -> [1, 1 + h'*w', D]``.

    The cls position (index 0) stays as it is; the h x w grid of patch positions is resized
    bilinearly with align_corners=False, as SETR's official loader and segedu do.
    """
    from ..models.setr import resize_pos_embed

    where = "check_resize_pos_embed"
    cases = [(8, (4, 6), (6, 9)), (4, (3, 3), (5, 2)), (6, (6, 4), (3, 2))]
    gen = torch.Generator().manual_seed(120)
    for D, gfrom, gto in cases:
        pos = torch.randn(1, 1 + gfrom[0] * gfrom[1], D, generator=gen)
        out = _run(where, fn, pos.clone(), gfrom, gto)
        expected = resize_pos_embed(pos, gfrom, gto)
        n_to = gto[0] * gto[1]
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (1, n_to, D):
            _fail(where, f"output shape {list(out.shape)}: the cls position is missing; keep pos_embed[:, :1] and "
                         f"put it back in front of the {n_to} resized grid positions")
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (1, D, *gto):
            _fail(where, f"output shape {list(out.shape)} is a map; flatten it back to a sequence "
                         f"'b d h w -> b (h w) d' and prepend the cls position: [1, 1 + {n_to}, {D}]")
        out = _expect_tensor(where, out, tuple(expected.shape),
                             f"A {gto[0]}x{gto[1]} grid needs 1 + {n_to} positions.")
        f = lambda **bug: _resize(pos, gfrom, gto, **bug)  # noqa: E731
        candidates = [
            ("align_corners=True; SETR and segedu resize the positions with align_corners=False.",
             lambda: f(align_corners=True)),
            ("bicubic interpolation (timm's and mmseg's class default); SETR's configs, its official loader and "
             "segedu use bilinear (align_corners=False).", lambda: f(mode="bicubic")),
            ("nearest-neighbour resizing; use bilinear (align_corners=False).", lambda: f(mode="nearest")),
            ("the cls position was interpolated together with the grid; split it off first (pos_embed[:, :1]), "
             "resize only the h x w grid, then put it back in front.", lambda: f(keep_cls=False)),
            ("the grid positions were reshaped to [1, D, h, w] without moving D first: use "
             "rearrange(grid, 'b (h w) d -> b d h w', h=h, w=w).", lambda: f(fold="reshape")),
            ("height and width are swapped when the sequence is folded into a grid: position n is at row "
             "n // w, column n % w.", lambda: f(fold="swapped")),
        ]
        generic = "Expected cat([cls position, bilinear resize (align_corners=False) of the h x w grid])."
        if not torch.equal(out[:, :1], pos[:, :1]):
            generic += " The cls position (index 0) must come back unchanged."
        _diagnose(f"{where} (grid {gfrom[0]}x{gfrom[1]} -> {gto[0]}x{gto[1]})", out, expected, candidates, generic)
    _passed(where, len(cases), "segedu.models.setr.resize_pos_embed")
