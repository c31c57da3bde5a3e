"""A small synthetic scene-parsing dataset in the ADE20K layout.

The real ADE20K cannot be downloaded on every machine the course runs on, so
this module paints street and landscape scenes with their label maps. The
label PNGs use real ADE20K values (0 = unlabeled, 1..150 = class index + 1),
so the same loader, ``reduce_zero_label`` and 150-class models work on both.

The scenes are built so that colour alone is not enough: water mirrors the
sky, grass and trees are both green, road, sidewalk and facades are all grey,
clouds, snow and white cars are all white. What tells them apart is texture
(ripples, blades, leaf clumps, window grids, paving) and context (water lies
below the horizon, cars stand on roads). A little of every image is left
unlabeled (value 0: poles, signs, bins, rocks), as in ADE20K.

Every scene is drawn from ``numpy.random.default_rng([seed, split, index])``,
so an image depends only on those three numbers. Run
``python -m segedu.data.synthetic --root data/synthetic`` to write the set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .ade20k import ADE20K_CLASSES

GENERATOR_VERSION = 1
SPLIT_IDS = {"training": 0, "validation": 1}
DEFAULT_SIZE = (144, 192)  # (H, W): deliberately not multiples of 32
JPEG_QUALITY = 95


def ade_id(name: str) -> int:
    """PNG value of an ADE20K class: its index in ADE20K_CLASSES plus one."""
    return ADE20K_CLASSES.index(name) + 1


SKY, BUILDING, TREE, ROAD, GRASS = (ade_id(n) for n in ("sky", "building", "tree", "road", "grass"))
SIDEWALK, PERSON, MOUNTAIN, CAR, WATER = (
    ade_id(n) for n in ("sidewalk", "person", "mountain", "car", "water")
)
UNLABELED = 0
# PNG values the generator uses (besides 0), in ADE20K order.
SYNTHETIC_CLASSES = tuple(sorted((SKY, BUILDING, TREE, ROAD, GRASS, SIDEWALK, PERSON, MOUNTAIN, CAR, WATER)))

Colour = np.ndarray  # float32 RGB in 0..255, shape (3,) or (..., 3)


# ----------------------------------------------------------------------------
# Noise: fractal value noise, sampled at any coordinates (pixels or metres).
# ----------------------------------------------------------------------------
_LATTICE = 64


def _lattice(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smoothly interpolate a periodic random grid (side a power of two) at (u, v)."""
    n = grid.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)  # smoothstep
    i0 = u0.astype(np.int32) & (n - 1)  # column index, wrapped
    j0 = (v0.astype(np.int32) & (n - 1)) * n  # row offset into the flat grid
    i1, j1 = (i0 + 1) & (n - 1), (j0 + n) & (n * n - 1)
    flat = grid.ravel()
    top = np.take(flat, j0 + i0)
    top += (np.take(flat, j0 + i1) - top) * fu
    bottom = np.take(flat, j1 + i0)
    bottom += (np.take(flat, j1 + i1) - bottom) * fu
    return top + (bottom - top) * fv


def fbm(rng: np.random.Generator, u, v, octaves: int = 3) -> np.ndarray:
    """Fractal noise at (u, v), measured in lattice cells; values roughly in [-1.5, 1.5].

    Each octave doubles the frequency and halves the amplitude, which gives
    the self-similar look of clouds, ridges and foliage.
    """
    u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
    total, norm = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32), 0.0
    for octave in range(octaves):
        grid = rng.standard_normal((_LATTICE, _LATTICE)).astype(np.float32)
        shift = rng.uniform(0, _LATTICE, 2).astype(np.float32)
        scale = np.float32(2.0**octave)
        total += _lattice(grid, u * scale + shift[0], v * scale + shift[1]) / scale
        norm += 1.0 / scale**2
    return total / np.float32(np.sqrt(norm))


def _length(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sqrt(a^2 + b^2) with IEEE-exact operations only (np.hypot may use
    CPU-specific SIMD code), so label maps are identical on every machine."""
    return np.sqrt(a * a + b * b)


def _jitter(rng: np.random.Generator, colour, amount: float) -> Colour:
    """A per-instance colour variation around ``colour``."""
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255).astype(np.float32)


def _mix(a, b, t) -> Colour:
    """Linear blend of colours a -> b; ``t`` broadcasts over pixels."""
    t = np.asarray(t, np.float32)[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


# ----------------------------------------------------------------------------
# Canvas and camera
# ----------------------------------------------------------------------------
class _Canvas:
    """An RGB float image, its label map and the pixel-centre coordinates."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.y, self.x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # [H, W] each
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        """Slices of the pixel box [x0, x1) x [y0, y1), or None if it is off-canvas."""
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.w)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.h)
        return (slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None

    def paint(self, region: np.ndarray, colour: Colour, label: int, box=(slice(None), slice(None))) -> None:
        """Paint ``colour`` and ``label`` where ``region`` is True inside ``box``.

        ``colour`` is one RGB triple or an array of the box's shape + (3,).
        """
        image, labels = self.image[box], self.label[box]  # views
        colour = np.broadcast_to(np.asarray(colour, np.float32), image.shape)
        image[region] = colour[region]
        labels[region] = label


class _Camera:
    """A pinhole camera at height cam_h and lateral position x0, looking along
    a flat ground (one-point perspective).

    World: X to the right, Y up (ground at Y = 0), Z = depth in metres. A point
    (X, Y, Z) appears at x = vx + f (X - x0) / Z, y = horizon + f (cam_h - Y) / Z,
    where (vx, horizon) is the vanishing point and f the focal length in pixels.
    """

    def __init__(self, f: float, horizon: float, vx: float, cam_h: float, x0: float = 0.0) -> None:
        self.f, self.horizon, self.vx, self.cam_h, self.x0 = f, horizon, vx, cam_h, x0

    def ground_depth(self, y: np.ndarray) -> np.ndarray:
        """Depth Z of the ground seen at image row y (below the horizon)."""
        return self.f * self.cam_h / np.maximum(y - self.horizon, 1e-3)

    def project(self, X, Y, Z) -> tuple[float, float]:
        return self.vx + self.f * (X - self.x0) / Z, self.horizon + self.f * (self.cam_h - Y) / Z


# ----------------------------------------------------------------------------
# Scene elements
# ----------------------------------------------------------------------------
def _sky(rng, cv: _Canvas, horizon: float) -> dict:
    """Gradient sky with clouds; returns the palette other elements reuse."""
    mood = rng.choice(["day", "overcast", "dusk"], p=[0.6, 0.2, 0.2])
    if mood == "day":
        zenith, low, cloud = (55, 105, 200), (170, 200, 235), (245, 245, 248)
    elif mood == "overcast":
        zenith, low, cloud = (140, 146, 158), (190, 192, 196), (215, 215, 218)
    else:
        zenith, low, cloud = (60, 70, 140), (240, 160, 110), (235, 180, 170)
    zenith, low, cloud = _jitter(rng, zenith, 10), _jitter(rng, low, 10), _jitter(rng, cloud, 6)
    t = np.clip(cv.y / max(horizon, 1.0), 0, 1) ** 0.7
    sky = _mix(zenith, low, t)
    # Clouds: fractal noise stretched horizontally, thresholded softly.
    n = fbm(rng, cv.x / cv.w * 4, cv.y / cv.h * 9, octaves=4)
    cover = rng.uniform(-0.2, 0.9) if mood != "overcast" else rng.uniform(0.3, 1.0)
    alpha = np.clip((n - 1 + cover) * 1.8, 0, 1) * rng.uniform(0.6, 1.0)
    shade = 0.85 + 0.15 * np.clip(-fbm(rng, cv.x / cv.w * 6, cv.y / cv.h * 12, 2), -1, 1)
    sky = _mix(sky, cloud * shade[..., None], alpha)
    cv.paint(np.ones_like(cv.label, bool), sky, SKY)
    return {"zenith": zenith, "low": low, "mood": mood}


def _mountains(rng, cv: _Canvas, horizon: float, haze: Colour, ranges: int) -> None:
    """Fractal ridge silhouettes, far ranges bluer (aerial perspective)."""
    for k in range(ranges):
        far = k < ranges - 1
        top = horizon - cv.h * rng.uniform(0.12, 0.32) * (0.7 if far else 1.0)
        amp = cv.h * rng.uniform(0.06, 0.16)
        u = cv.x[0] / cv.w * rng.uniform(2, 4)
        ridge = top + amp * fbm(rng, u, np.zeros_like(u), octaves=5)  # [W] row of the crest
        region = (cv.y >= ridge[None, :]) & (cv.y < horizon + 2)
        base = _jitter(rng, [(95, 105, 130), (85, 100, 75), (115, 100, 85)][rng.integers(3)], 12)
        base = _mix(base, haze, 0.45 if far else 0.15)
        slope = np.gradient(ridge)[None, :] * rng.choice([-1, 1])  # lit and shaded flanks
        depth = np.clip((cv.y - ridge[None, :]) / max(horizon - top, 1.0), 0, 1)
        gullies = fbm(rng, cv.x / cv.w * 14, cv.y / cv.h * 5, octaves=3)
        light = 1 + 0.25 * np.tanh(slope) * (1 - depth) + 0.12 * gullies - 0.15 * depth
        colour = base * light[..., None]
        if not far and rng.random() < 0.3:  # snow caps
            snow = (depth < rng.uniform(0.15, 0.35)) & (gullies > -0.3)
            colour = np.where(snow[..., None], np.float32(225) * light[..., None], colour)
        cv.paint(region, colour, MOUNTAIN)


def _grass_colour(rng, cv: _Canvas, cam: _Camera, haze: Colour, base: Colour) -> Colour:
    """Fine vertical blade texture plus patches, fading into haze near the horizon."""
    y, x = cv.y, cv.x
    near = np.clip((y - cam.horizon) / (cv.h - cam.horizon), 0, 1)
    blades = fbm(rng, x / 1.3, y / 5.0, octaves=2) * (0.3 + 0.7 * near)
    patches = fbm(rng, x / cv.w * 3, y / cv.h * 6, octaves=2)
    colour = base * (1 + 0.22 * blades + 0.12 * patches)[..., None]
    return _mix(colour, haze, 0.55 * np.exp(-(y - cam.horizon) / (0.08 * cv.h)))


def _road_colour(rng, cam: _Camera, X, Z, half: float, dashed: bool, edges: bool) -> Colour:
    """Asphalt with fine grain, repair patches and perspective lane markings."""
    grey = np.float32(rng.uniform(80, 115))
    fade = np.clip(cam.f / Z / 12, 0, 1)  # no sub-pixel grain far away
    grain = fbm(rng, X * 4, Z * 4, octaves=2) * fade
    repairs = fbm(rng, X / 3, Z / 6, octaves=2)
    colour = grey * (1 + 0.12 * grain + 0.08 * repairs)[..., None] * _jitter(rng, [1, 1, 1.04], 0.01)
    width = 0.09  # half the width of a painted line, metres
    paint = np.zeros(X.shape, bool)
    if dashed:
        period = rng.uniform(5, 9)
        paint |= (np.abs(X) < width) & ((Z / period) % 1 < 0.45)
    if edges:
        paint |= np.abs(np.abs(X) - (half - 0.35)) < width
    line = _jitter(rng, (230, 230, 225) if rng.random() < 0.7 else (230, 200, 70), 6)
    return np.where(paint[..., None], line, colour)


def _sidewalk_colour(rng, cam: _Camera, X, Z, half: float) -> Colour:
    """Light paving with a tile grid and a brighter curb next to the road."""
    base = _jitter(rng, [(160, 158, 152), (175, 165, 150), (140, 140, 145)][rng.integers(3)], 8)
    tile = rng.uniform(0.6, 1.2)
    joints = ((np.abs(X) / tile) % 1 < 0.07) | ((Z / tile) % 1 < 0.07)
    fade = np.clip(cam.f / Z * tile / 10, 0, 1)
    texture = 1 - 0.15 * joints * fade + 0.06 * fbm(rng, X * 3, Z * 3, 2) * fade
    colour = base * texture[..., None]
    curb = (np.abs(X) >= half) & (np.abs(X) < half + 0.22)
    return np.where(curb[..., None], np.float32(1.15) * base, colour)


def _facades(rng, cv: _Canvas, cam: _Camera, side: int, offset: float, z_far: float, sun: int, sky: dict):
    """Building fronts along one side of a street (side=-1 left, +1 right).

    The facade is the vertical plane X = side * offset, at lateral distance
    D = offset - side * x0 from the camera. A pixel column at distance d from
    the vanishing point sees that plane at depth Z = f D / d,
    so windows are laid out on a (Z, height) grid in metres and come out in
    correct perspective.
    """
    d = (cv.x[0] - cam.vx) * side  # [W] signed distance from the vanishing point
    dist = offset - side * cam.x0
    cols = d > 0.5
    Z = np.where(cols, cam.f * dist / np.maximum(d, 0.5), 1e6)  # 1e6: not this side
    # Buildings along the street: segments in Z with their own look.
    edges, z = [], cam.f * dist / max(cv.w, 1.0)
    while z < z_far:
        edges.append(z)
        z += rng.uniform(6, 18)
    n = len(edges)
    seg = np.clip(np.searchsorted(edges, Z) - 1, 0, n - 1)  # [W] building index per column
    heights = rng.uniform(5, 28, n)
    floor_h, bay = rng.uniform(2.8, 3.6, n), rng.uniform(2.2, 3.8, n)
    win_w, win_h = rng.uniform(0.35, 0.7, n), rng.uniform(0.35, 0.65, n)
    bases = [(150, 150, 150), (195, 180, 155), (150, 85, 65), (210, 210, 205), (95, 100, 105)]
    wall = np.stack([_jitter(rng, bases[rng.integers(len(bases))], 12) for _ in range(n)])
    glass = np.stack([_jitter(rng, (40, 50, 65), 8) if rng.random() < 0.5 else sky["low"] * 0.8 for _ in range(n)])
    shops = rng.random(n) < 0.5
    lit = 1.0 if side == sun else 0.72  # the facade facing the sun is brighter

    Zc, hc = Z[None, :], heights[seg][None, :]
    top = cam.horizon - (hc - cam.cam_h) * cam.f / Zc
    ground = cam.horizon + cam.cam_h * cam.f / Zc
    region = cols[None, :] & (Z[None, :] < z_far) & (cv.y >= top) & (cv.y <= ground)
    Yw = cam.cam_h - (cv.y - cam.horizon) * Zc / cam.f  # height on the wall, metres
    fu = (Zc / bay[seg][None, :]) % 1  # position inside a window bay
    fv = (Yw / floor_h[seg][None, :]) % 1  # position inside a floor
    window = (np.abs(fu - 0.5) < win_w[seg] / 2) & (np.abs(fv - 0.55) < win_h[seg] / 2)
    window &= (Yw > 3.2) & (Yw < hc - 1.0)
    shop = shops[seg][None, :] & (Yw > 0.4) & (Yw < 2.8) & (np.abs(fu - 0.5) < 0.42)
    cornice = Yw > hc - 0.5
    # Per-window brightness, so windows are not all the same.
    cell = rng.standard_normal((_LATTICE, _LATTICE)).astype(np.float32)
    wi = np.floor(Zc / bay[seg][None, :]).astype(np.int64) % _LATTICE
    wj = np.floor(Yw / floor_h[seg][None, :]).astype(np.int64) % _LATTICE
    pane = glass[seg][None, :, :] * (1 + 0.18 * cell[wj, wi])[..., None]
    if sky["mood"] == "dusk":
        pane = np.where((cell[wj, wi] > 1.0)[..., None], np.float32([235, 200, 120]), pane)
    fade = np.clip(cam.f / Zc * bay[seg][None, :] / 5, 0, 1)[..., None]  # windows blur out far away
    texture = 1 + 0.06 * fbm(rng, Zc * 1.5, Yw * 1.5, 2)
    colour = wall[seg][None, :, :] * texture[..., None]
    colour = np.where((window | shop)[..., None], colour * (1 - fade) + pane * fade, colour)
    colour = np.where(cornice[..., None], colour * 0.8, colour) * lit
    cv.paint(region, colour, BUILDING)


def _skyline(rng, cv: _Canvas, cam: _Camera, z: float, haze: Colour) -> None:
    """Distant buildings facing the camera at depth z (end of a street)."""
    ground = cam.horizon + cam.cam_h * cam.f / z
    x = 0.0
    while x < cv.w:
        width = cam.f * rng.uniform(8, 20) / z
        height = rng.uniform(8, 40)
        top = cam.horizon - (height - cam.cam_h) * cam.f / z
        box = cv.window(x, x + width, top, ground)
        if box is not None:
            base = _mix(_jitter(rng, (140, 140, 145), 20), haze, 0.35)
            rows = (cv.y[box] - top) % 3 < 1.2  # faint rows of tiny windows
            colour = base * (1 + 0.06 * fbm(rng, cv.x[box] / 6, cv.y[box] / 6, 2) - 0.12 * rows)[..., None]
            cv.paint(np.ones(cv.label[box].shape, bool), colour, BUILDING, box)
        x += width


def _tree(rng, cv: _Canvas, cam: _Camera, X: float, Z: float, sun: int) -> None:
    """A broadleaf (noisy canopy blobs) or conifer (layered cone) with a trunk."""
    height = rng.uniform(4, 9)
    conifer = rng.random() < 0.3
    radius = rng.uniform(1.4, 2.8) if not conifer else rng.uniform(1.0, 1.8)
    trunk_top = height - (2 * radius if not conifer else 0.75 * height)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z  # pixels per metre at this depth
    box = cv.window(xb - 1.6 * radius * s, xb + 1.6 * radius * s, yb - (height + 0.5) * s, yb + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / s, (yb - cv.y[box]) / s  # local metres: across, up
    trunk = (np.abs(a) < max(0.15, 0.7 / s)) & (b >= 0) & (b < trunk_top + 0.5)
    edge_noise = fbm(rng, a * 1.5, b * 1.5, 3)
    if conifer:
        up = (b - trunk_top) / (height - trunk_top)  # 0 at the lowest branches, 1 at the tip
        teeth = (up * 5) % 1  # layered branch tiers
        canopy = (up >= 0) & (up <= 1) & (np.abs(a) < radius * (1 - up) * (0.75 + 0.3 * teeth) + 0.15 * edge_noise)
        base = _jitter(rng, (35, 70, 45), 8)
    else:
        cy = height - radius
        blobs = np.full(a.shape, np.inf, np.float32)
        for _ in range(rng.integers(3, 6)):
            ox, oy = rng.uniform(-0.5, 0.5) * radius, rng.uniform(-0.4, 0.3) * radius  # blob centre
            r = rng.uniform(0.55, 0.85) * radius
            blobs = np.minimum(blobs, _length(a - ox, b - cy - oy) / r)
        canopy = blobs + 0.18 * edge_noise < 1
        base = _jitter(rng, [(55, 95, 40), (70, 105, 45), (45, 80, 50), (95, 110, 45)][rng.integers(4)], 10)
    clumps = fbm(rng, a * 2.2, b * 2.2, 3)
    light = 1 + 0.25 * clumps + 0.2 * np.clip(sun * a / radius, -1, 1)
    colour = np.where(canopy[..., None], base * light[..., None], _jitter(rng, (85, 65, 45), 8))
    cv.paint(trunk | canopy, colour, TREE, box)


def _person(rng, cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    """A standing or walking figure: head, torso, arms, two legs."""
    tall = rng.uniform(1.55, 1.9)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - 0.45 * s, xb + 0.45 * s, yb - (tall + 0.05) * s, yb + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / (tall * s), (yb - cv.y[box]) / (tall * s)  # in body heights
    stride = rng.uniform(-0.08, 0.08)
    head = _length(a / 0.07, (b - 0.92) / 0.075) < 1
    torso = (b >= 0.5) & (b < 0.85) & (np.abs(a) < 0.12 + 0.04 * (b - 0.5) / 0.35)
    arms = (b >= 0.46) & (b < 0.83) & (np.abs(a) >= 0.11) & (np.abs(a) < 0.2 - 0.04 * (0.83 - b))
    legs = (b >= 0) & (b < 0.52)
    legs &= (np.abs(a - 0.06 - stride * (0.52 - b)) < 0.06) | (np.abs(a + 0.06 + stride * (0.52 - b)) < 0.06)
    skin = _jitter(rng, [(230, 195, 165), (195, 145, 110), (125, 90, 65), (245, 215, 195)][rng.integers(4)], 8)
    hair = _jitter(rng, [(40, 30, 25), (90, 60, 35), (200, 170, 110), (20, 20, 20)][rng.integers(4)], 6)
    shirt = np.float32(rng.uniform(20, 235, 3))
    trousers = _jitter(rng, [(40, 50, 80), (30, 30, 35), (160, 140, 100), (90, 90, 95)][rng.integers(4)], 10)
    colour = np.where(head[..., None], np.where((b > 0.94)[..., None], hair, skin), shirt)
    colour = np.where(legs[..., None], trousers, colour)
    colour = np.where((arms & (b < 0.6))[..., None], skin, colour)  # bare hands
    colour = colour * (1 + 0.1 * fbm(rng, a * 20, b * 20, 2))[..., None]
    cv.paint(head | torso | arms | legs, colour, PERSON, box)


def _car(rng, cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    """A car seen from behind: body, rear window, wheels, tail lights, plate."""
    width, tall = rng.uniform(1.65, 1.95), rng.uniform(1.35, 1.7)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - 0.6 * width * s, xb + 0.6 * width * s, yb - tall * s - 1, yb + 0.15 * s + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / s, (yb - cv.y[box]) / s  # local metres: across, up
    half = width / 2
    body = (np.abs(a) < half) & (b >= 0.22) & (b < 0.58 * tall + 0.22 * (1 - np.abs(a) / half))
    cabin_w = half * (0.82 - 0.15 * (b - 0.58 * tall) / (0.42 * tall))
    cabin = (b >= 0.5 * tall) & (b < tall) & (np.abs(a) < cabin_w)
    window = cabin & (b > 0.6 * tall) & (b < 0.93 * tall) & (np.abs(a) < cabin_w - 0.1)
    wheels = (b >= 0) & (b < 0.35) & (np.abs(a) > half - 0.32) & (np.abs(a) < half - 0.02)
    lights = (b > 0.42 * tall) & (b < 0.52 * tall) & (np.abs(a) > half - 0.3) & (np.abs(a) < half)
    plate = (np.abs(a) < 0.26) & (np.abs(b - 0.33 * tall) < 0.07)
    palette = [(235, 235, 235), (170, 172, 178), (30, 30, 35), (170, 30, 35), (35, 60, 140), (40, 80, 55),
               (220, 190, 40)]
    paint = _jitter(rng, palette[rng.integers(len(palette))], 10)
    shine = 1 + 0.15 * np.clip((b - 0.5 * tall) / tall, -1, 1)
    colour = paint * shine[..., None]
    colour = np.where(window[..., None], _jitter(rng, (50, 60, 75), 10), colour)
    colour = np.where(lights[..., None], np.float32([200, 30, 30]), colour)
    colour = np.where(plate[..., None], np.float32([225, 225, 215]), colour)
    colour = np.where(wheels[..., None], np.float32([22, 22, 24]), colour)
    # A soft dark shadow on the road under the car keeps its label (road).
    shadow = (np.abs(a) < half * 1.05) & (b > -0.12) & (b < 0.25) & ~wheels
    cv.image[box][shadow] *= 0.55
    cv.paint(body | cabin | wheels, colour, CAR, box)


def _person_depth(rng, cv: _Canvas, cam: _Camera) -> float:
    """A depth at which a person is at least 24% of the image height tall
    (35 px at the default size): small classes must stay learnable."""
    return rng.uniform(3.0, max(cam.f * 1.75 / (0.24 * cv.h), 3.5))


def _car_depth(rng, cv: _Canvas, cam: _Camera) -> float:
    """A depth at which a car is at least 18% of the image width wide (35 px)."""
    return rng.uniform(4.5, max(cam.f * 1.8 / (0.18 * cv.w), 5.0))


def _pole(rng, cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    """A street pole with a sign: clutter that ADE20K would leave unlabeled (0)."""
    tall = rng.uniform(3, 6)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - 0.5 * s, xb + 0.5 * s, yb - tall * s, yb + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / s, (yb - cv.y[box]) / s
    pole = (np.abs(a) < max(0.07, 0.9 / s)) & (b >= 0) & (b < tall)
    sign = (np.abs(a) < 0.35) & (np.abs(b - tall * 0.8) < 0.3) & (rng.random() < 0.7)
    sign_colour = _jitter(rng, [(30, 80, 170), (190, 30, 30), (230, 230, 230)][rng.integers(3)], 10)
    colour = np.where(sign[..., None], sign_colour, np.float32([70, 72, 75]))
    cv.paint(pole | sign, colour, UNLABELED, box)


def _rock(rng, cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    """A grey boulder: unlabeled clutter (0) on grass."""
    r = rng.uniform(0.4, 1.1)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - 1.3 * r * s, xb + 1.3 * r * s, yb - 1.3 * r * s, yb + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / s, (yb - cv.y[box]) / s
    n = fbm(rng, a * 2, b * 2, 3)
    rock = (_length(a, (b - 0.3 * r) * 1.4) / r + 0.25 * n < 1) & (b >= 0)
    colour = _jitter(rng, (125, 120, 115), 12) * (1 + 0.2 * n + 0.15 * np.clip(b / r, 0, 1))[..., None]
    cv.paint(rock, colour, UNLABELED, box)


def _street_furniture(rng, cv: _Canvas, cam: _Camera, X: float, Z: float) -> None:
    """A bin, bench or kiosk box on the sidewalk: unlabeled clutter (0)."""
    width, tall = rng.uniform(0.6, 1.8), rng.uniform(0.8, 1.6)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - width / 2 * s, xb + width / 2 * s, yb - tall * s, yb)
    if box is None:
        return
    b = (yb - cv.y[box]) / s
    colour = _jitter(rng, [(40, 75, 50), (70, 70, 75), (110, 80, 55), (40, 60, 110)][rng.integers(4)], 10)
    colour = colour * (1 + 0.15 * (b / tall))[..., None]
    cv.paint(np.ones(b.shape, bool), colour, UNLABELED, box)


def _house(rng, cv: _Canvas, cam: _Camera, X: float, Z: float, sun: int) -> None:
    """A small house facing the camera: walls with windows and a door, pitched roof."""
    width, wall_h, roof_h = rng.uniform(6, 11), rng.uniform(3, 6), rng.uniform(1.8, 3.2)
    xb, yb = cam.project(X, 0.0, Z)
    s = cam.f / Z
    box = cv.window(xb - 0.6 * width * s, xb + 0.6 * width * s, yb - (wall_h + roof_h) * s - 1, yb + 1)
    if box is None:
        return
    a, b = (cv.x[box] - xb) / s, (yb - cv.y[box]) / s
    walls = (np.abs(a) < width / 2) & (b >= 0) & (b < wall_h)
    roof = (b >= wall_h) & (np.abs(a) < (width / 2 + 0.4) * (1 - (b - wall_h) / roof_h))
    bay = rng.uniform(1.8, 2.6)
    window = walls & ((a / bay) % 1 > 0.3) & ((a / bay) % 1 < 0.7) & (((b - 0.9) % 2.8) < 1.2) & (b > 0.9)
    window &= np.abs(a) < width / 2 - 0.4
    door = walls & (np.abs(a - width * 0.15) < 0.5) & (b < 2.1)
    wall_c = _jitter(rng, [(225, 220, 205), (200, 175, 140), (150, 110, 80), (180, 185, 190)][rng.integers(4)], 10)
    roof_c = _jitter(rng, [(140, 55, 45), (75, 65, 60), (100, 70, 55)][rng.integers(3)], 10)
    colour = np.where(roof[..., None], roof_c * (1 + 0.1 * np.sign(a) * sun)[..., None], wall_c)
    colour = np.where(window[..., None], _jitter(rng, (55, 65, 80), 10), colour)
    colour = np.where(door[..., None], _jitter(rng, (90, 60, 40), 10), colour)
    colour = colour * (1 + 0.06 * fbm(rng, a * 2, b * 2, 2))[..., None]
    cv.paint(walls | roof, colour, BUILDING, box)


def _water(rng, cv: _Canvas, cam: _Camera, region: np.ndarray, sky: dict) -> None:
    """Water reflects what is above the horizon, broken up by ripples.

    The reflected colour is read from the already painted scene at the row
    mirrored about the horizon, with a horizontal wobble that grows with
    nearness; so the water has the sky's colours but not its texture.
    """
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return
    y, x = cv.y[ys, xs], cv.x[ys, xs]
    Z = cam.ground_depth(y)
    X = (x - cam.vx) * Z / cam.f
    wobble = fbm(rng, X * 0.8, Z * 3.0, 3)
    near = np.clip(cam.f / Z / 20, 0, 1)
    ym = np.clip(2 * cam.horizon - y + 2 * wobble * near, 0, cam.horizon - 1)
    xm = np.clip(x + 3 * wobble * near, 0, cv.w - 1)
    reflected = cv.image[ym.astype(np.int64), xm.astype(np.int64)]
    deep = _jitter(rng, (30, 65, 80), 10)
    streaks = fbm(rng, X * 0.3, Z * 6.0, 2)
    colour = _mix(reflected * 0.85, deep, 0.35 + 0.35 * near) * (1 + 0.16 * streaks)[..., None]
    cv.image[ys, xs] = colour
    cv.label[ys, xs] = WATER


# ----------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------
def _ground_xz(cv: _Canvas, cam: _Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-plane coordinates (X, Z) of every pixel below the horizon."""
    below = cv.y > cam.horizon + 0.5
    Z = np.where(below, cam.ground_depth(cv.y), 1e4).astype(np.float32)
    return below, cam.x0 + (cv.x - cam.vx) * Z / cam.f, Z


def _street(rng, cv: _Canvas, sun: int) -> None:
    """Perspective street: facades with windows, sidewalks, road, cars, people."""
    half = rng.uniform(2.5, 4.5)  # half the road width, metres
    cam = _Camera(f=cv.w * rng.uniform(0.75, 0.95), horizon=cv.h * rng.uniform(0.38, 0.5),
                  vx=cv.w * rng.uniform(0.35, 0.65), cam_h=rng.uniform(1.4, 2.0),
                  x0=rng.uniform(-0.8, 0.8) * half)
    sky = _sky(rng, cv, cam.horizon)
    haze = sky["low"]
    if rng.random() < 0.35:
        _mountains(rng, cv, cam.horizon, haze, 1)
    verge = {side: rng.uniform(1.0, 2.5) if rng.random() < 0.35 else 0.0 for side in (-1, 1)}
    walk = {side: rng.uniform(3.0, 6.0) for side in (-1, 1)}
    park = {side: rng.random() < 0.15 for side in (-1, 1)}
    z_far = rng.uniform(45, 110)
    if rng.random() < 0.65:
        _skyline(rng, cv, cam, z_far, haze)

    below, X, Z = _ground_xz(cv, cam)
    side_of = np.where(X < 0, -1, 1)
    inner = half + np.where(side_of < 0, verge[-1], verge[1])  # where the sidewalk starts
    outer = inner + np.where(side_of < 0, walk[-1], walk[1])  # where the facade stands
    parkland = np.where(side_of < 0, park[-1], park[1]) & (np.abs(X) >= outer)
    road = below & (np.abs(X) < half)
    grass = below & (((np.abs(X) >= half + 0.22) & (np.abs(X) < inner)) | parkland)
    walkway = below & ~road & ~grass
    cv.paint(road, _road_colour(rng, cam, X, Z, half, rng.random() < 0.8, rng.random() < 0.5), ROAD)
    cv.paint(walkway, _sidewalk_colour(rng, cam, X, Z, half), SIDEWALK)
    cv.paint(grass, _grass_colour(rng, cv, cam, haze, _jitter(rng, (70, 125, 45), 12)), GRASS)
    for side in (-1, 1):
        if not park[side]:
            _facades(rng, cv, cam, side, half + verge[side] + walk[side], z_far, sun, sky)

    # Objects at world positions (X, Z), painted far to near so nearer ones occlude.
    objects: list[tuple[float, Callable[[], None]]] = []
    for side in (-1, 1):
        lo = half + 0.6 if verge[side] == 0 else half + verge[side] / 2  # tree pits or verge
        for _ in range(rng.integers(0, 4)):
            x, z = side * rng.uniform(lo, lo + 0.5), rng.uniform(5, 50)
            objects.append((z, lambda x=x, z=z: _tree(rng, cv, cam, x, z, sun)))
        for _ in range(rng.integers(3, 7) if park[side] else 0):
            x, z = side * rng.uniform(lo + walk[side], lo + walk[side] + 12), rng.uniform(6, 50)
            objects.append((z, lambda x=x, z=z: _tree(rng, cv, cam, x, z, sun)))
        for _ in range(rng.integers(0, 3)):
            x, z = side * (half + 0.4), rng.uniform(5, 40)
            objects.append((z, lambda x=x, z=z: _pole(rng, cv, cam, x, z)))
        for _ in range(rng.integers(0, 2)):
            x = side * rng.uniform(half + verge[side] + 0.5, half + verge[side] + walk[side] - 0.5)
            z = rng.uniform(5, 30)
            objects.append((z, lambda x=x, z=z: _street_furniture(rng, cv, cam, x, z)))
    for _ in range(rng.integers(3, 9)):
        side = rng.choice([-1, 1])
        x = side * rng.uniform(half + verge[side] + 0.4, half + verge[side] + walk[side] - 0.4)
        if rng.random() < 0.2:  # someone crossing the road
            x = rng.uniform(-half, half)
        objects.append((z := _person_depth(rng, cv, cam), lambda x=x, z=z: _person(rng, cv, cam, x, z)))
    for _ in range(rng.integers(1, 5)):
        x = rng.choice([-1, 1]) * half / 2 + rng.uniform(-0.4, 0.4)
        objects.append((z := _car_depth(rng, cv, cam), lambda x=x, z=z: _car(rng, cv, cam, x, z)))
    for _, draw in sorted(objects, key=lambda item: -item[0]):
        draw()


def _landscape(rng, cv: _Canvas, sun: int) -> None:
    """Mountains, a lake or fields with a country road, trees, houses, people."""
    cam = _Camera(f=cv.w * rng.uniform(0.75, 0.95), horizon=cv.h * rng.uniform(0.38, 0.55),
                  vx=cv.w * rng.uniform(0.3, 0.7), cam_h=rng.uniform(1.5, 3.0))
    sky = _sky(rng, cv, cam.horizon)
    haze = sky["low"]
    if rng.random() < 0.9:
        _mountains(rng, cv, cam.horizon, haze, int(rng.integers(1, 3)))
    lake = rng.random() < 0.55
    below, X, Z = _ground_xz(cv, cam)
    grass_base = _jitter(rng, [(70, 125, 45), (105, 135, 55), (55, 110, 45)][rng.integers(3)], 12)
    if lake:
        if rng.random() < 0.7:  # a line of distant trees on the far shore
            band = cam.horizon - (2 + 4 * np.abs(fbm(rng, cv.x[0] / 6, np.zeros(cv.w, np.float32), 3)))
            far = (cv.y >= band[None, :]) & (cv.y < cam.horizon + 0.5)
            dark = _jitter(rng, (45, 75, 45), 8) * (1 + 0.2 * fbm(rng, cv.x / 2, cv.y / 2, 2))[..., None]
            cv.paint(far, _mix(dark, haze, 0.3), TREE)
        shore = cam.horizon + (cv.h - cam.horizon) * rng.uniform(0.25, 0.7)
        shore = shore + cv.h * 0.05 * fbm(rng, cv.x[0] / cv.w * 3, np.zeros(cv.w, np.float32), 3)  # [W]
        water = below & (cv.y < shore[None, :])
        land = below & ~water
        cv.paint(land, _grass_colour(rng, cv, cam, haze, grass_base), GRASS)
        _water(rng, cv, cam, water, sky)
        road_half = None
    else:
        cv.paint(below, _grass_colour(rng, cv, cam, haze, grass_base), GRASS)
        if rng.random() < 0.4:  # a pond: an ellipse on the ground plane
            cx, cz = rng.uniform(-15, 15), rng.uniform(10, 30)
            pond = below & (((X - cx) / rng.uniform(4, 10)) ** 2 + ((Z - cz) / rng.uniform(3, 8)) ** 2 < 1)
            _water(rng, cv, cam, pond, sky)
        road_half = rng.uniform(2.5, 4.0) if rng.random() < 0.75 else None
        if road_half is not None:
            road = below & (np.abs(X) < road_half) & (cv.label == GRASS)
            cv.paint(road, _road_colour(rng, cam, X, Z, road_half, rng.random() < 0.6, False), ROAD)

    def free(x: float, z: float, allowed: tuple[int, ...]) -> bool:
        """Does the ground point (x, z) fall on one of the allowed labels?"""
        u, v = cam.project(x, 0.0, z)
        return 0 <= u < cv.w and 0 <= v < cv.h and int(cv.label[int(v), int(u)]) in allowed

    objects: list[tuple[float, Callable[[], None]]] = []
    for _ in range(rng.integers(2, 9)):
        x, z = rng.uniform(-25, 25), rng.uniform(6, 60)
        if free(x, z, (GRASS,)):
            objects.append((z, lambda x=x, z=z: _tree(rng, cv, cam, x, z, sun)))
    if rng.random() < (0.6 if road_half else 0.35):
        for _ in range(rng.integers(1, 3)):
            x, z = rng.uniform(-30, 30), rng.uniform(15, 60)
            if free(x, z, (GRASS,)) and (road_half is None or abs(x) > road_half + 6):
                objects.append((z, lambda x=x, z=z: _house(rng, cv, cam, x, z, sun)))
    for _ in range(rng.integers(2, 7)):
        x, z = rng.uniform(-8, 8), _person_depth(rng, cv, cam)
        if free(x, z, (GRASS, ROAD)):
            objects.append((z, lambda x=x, z=z: _person(rng, cv, cam, x, z)))
    if road_half is not None:
        for _ in range(rng.integers(1, 4)):
            x, z = rng.choice([-1, 1]) * road_half / 2, _car_depth(rng, cv, cam)
            objects.append((z, lambda x=x, z=z: _car(rng, cv, cam, x, z)))
    for _ in range(rng.integers(0, 5)):
        x, z = rng.uniform(-10, 10), rng.uniform(4, 25)
        if free(x, z, (GRASS,)):
            objects.append((z, lambda x=x, z=z: _rock(rng, cv, cam, x, z)))
    for _, draw in sorted(objects, key=lambda item: -item[0]):
        draw()


def _blur(image: np.ndarray, a: float) -> np.ndarray:
    """Separable 3-tap blur [a, 1 - 2a, a] over rows, then columns (edges repeated)."""
    p = np.pad(image, ((1, 1), (0, 0), (0, 0)), mode="edge")
    image = a * p[:-2] + (1 - 2 * a) * p[1:-1] + a * p[2:]
    p = np.pad(image, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return a * p[:, :-2] + (1 - 2 * a) * p[:, 1:-1] + a * p[:, 2:]


def _finish(rng, cv: _Canvas, sun: int) -> np.ndarray:
    """Camera effects on the image only: light falloff, colour cast, blur, noise."""
    gradient = 1 + rng.uniform(0, 0.25) * sun * (cv.x / cv.w - 0.5) - 0.08 * (cv.y / cv.h - 0.5)
    vignette = 1 - 0.15 * (((cv.x / cv.w - 0.5) ** 2 + (cv.y / cv.h - 0.5) ** 2) * 2)
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)  # exposure, colour cast
    image = cv.image * (gradient * vignette)[..., None] * gain
    image = _blur(image, rng.uniform(0.08, 0.25))
    image = image + rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Paint one random scene.

    Returns ``image`` uint8 [H, W, 3] RGB and ``mask`` uint8 [H, W] with ADE20K
    values (0 = unlabeled, else ADE20K class index + 1, from SYNTHETIC_CLASSES).
    """
    height, width = size
    cv = _Canvas(height, width)
    sun = int(rng.choice([-1, 1]))  # the sun shines from the left (-1) or right (+1)
    if rng.random() < 0.5:
        _street(rng, cv, sun)
    else:
        _landscape(rng, cv, sun)
    return _finish(rng, cv, sun), cv.label


# ----------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------
def _file_stem(split: str, index: int) -> str:
    return f"SYN_{'train' if split == 'training' else 'val'}_{index:05d}"


# meta.json's "generator" value: the marker of a folder this module made (and may replace).
GENERATOR = "segedu.data.synthetic"


def _meta(n_train: int, n_val: int, size: tuple[int, int], seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size_hw": list(size),
        "counts": {"training": n_train, "validation": n_val},
        "classes": {str(v): ADE20K_CLASSES[v - 1] for v in SYNTHETIC_CLASSES},
        "unlabeled_value": UNLABELED,
    }


def generate(
    root: str | Path,
    n_train: int = 500,
    n_val: int = 100,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic set under ``root`` in the ADE20K layout and return ``root``.

    Files: ``images/{training,validation}/SYN_*.jpg`` (JPEG quality 95),
    ``annotations/{split}/SYN_*.png`` (single-channel uint8) and
    ``meta.json`` (written last, so an interrupted run is never mistaken for
    a finished one). Refuses to write into an existing set unless
    ``overwrite``; then it first deletes the old ``SYN_*`` files. A folder holding
    files this module did not make is refused (:func:`check_ours`).
    """
    root = Path(root)
    if (root / "meta.json").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a synthetic set; pass overwrite=True")
    check_ours(root)  # only an empty folder or a set made here is written into
    (root / "meta.json").unlink(missing_ok=True)
    for split, count in (("training", n_train), ("validation", n_val)):
        image_dir, annotation_dir = root / "images" / split, root / "annotations" / split
        for folder in (image_dir, annotation_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("SYN_*"):
                old.unlink()
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
            image, mask = render_scene(rng, size)
            stem = _file_stem(split, index)
            # Pillow's JPEG encoder gives the same bytes as torchvision's encode_jpeg did (libjpeg-turbo, 4:2:0).
            Image.fromarray(image).save(image_dir / f"{stem}.jpg", format="JPEG", quality=JPEG_QUALITY)
            Image.fromarray(mask).save(annotation_dir / f"{stem}.png", format="PNG")  # uint8 [H, W]
    (root / "meta.json").write_text(json.dumps(_meta(n_train, n_val, tuple(size), seed), indent=2) + "\n")
    return root


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def check_ours(root: str | Path) -> None:
    """Raise ``FileExistsError`` unless ``root`` is missing, empty, or a set this module made: a ``meta.json``
    whose ``generator`` is :data:`GENERATOR`, and no other files than ``images/*/SYN_*.jpg`` and
    ``annotations/*/SYN_*.png``. Nothing else may be replaced."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} is a file; give a folder path for the synthetic set")
    files = [p.relative_to(root) for p in root.rglob("*") if not p.is_dir()]
    if not files:
        return
    meta = _read_meta(root)
    if meta is None or meta.get("generator") != GENERATOR:
        raise FileExistsError(f"{root} holds {len(files)} file(s) that segedu did not make (no meta.json written by "
                              f"{GENERATOR}); give an empty or new folder")
    foreign = [f for f in files if f.as_posix() != "meta.json" and not (
        len(f.parts) == 3 and ((f.parts[0] == "images" and f.suffix == ".jpg")
                               or (f.parts[0] == "annotations" and f.suffix == ".png")) and f.name.startswith("SYN_"))]
    if foreign:
        raise FileExistsError(f"{root} is a synthetic set but also holds {len(foreign)} other file(s), e.g. "
                              f"{foreign[0]}; move them away first (segedu replaces only what it made)")


def ensure_synthetic(
    root: str | Path = "data/synthetic",
    n_train: int = 500,
    n_val: int = 100,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
) -> Path:
    """Return ``root``, generating the set first if it is missing or was made
    with other parameters (or by another generator version).

    Only a missing or empty folder, or one this module made (:func:`check_ours`), is written or replaced.
    """
    root = Path(root)
    wanted = _meta(n_train, n_val, tuple(size), seed)
    if _read_meta(root) == wanted:
        return root
    check_ours(root)
    # Write a complete set beside ``root``, then swap it in with renames: a reader (or a second
    # process generating at the same time) never sees a half-written set.
    root.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{root.name}.new-", dir=root.parent))
    try:
        generate(fresh, n_train, n_val, size, seed)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)  # ours: made just above
        raise
    stale = root.parent / f".{root.name}.old-{os.getpid()}"
    try:
        root.rename(stale)
    except FileNotFoundError:
        pass
    try:
        fresh.rename(root)
    except OSError:  # another process swapped its (identical) set in first
        shutil.rmtree(fresh)
    shutil.rmtree(stale, ignore_errors=True)
    return root


def _main() -> None:
    parser = argparse.ArgumentParser(description="Write the segedu synthetic scene-parsing set.")
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-val", type=int, default=100)
    parser.add_argument("--height", type=int, default=DEFAULT_SIZE[0])
    parser.add_argument("--width", type=int, default=DEFAULT_SIZE[1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    root = ensure_synthetic(args.root, args.n_train, args.n_val, (args.height, args.width), args.seed)
    print(f"synthetic set ready at {root} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    _main()
