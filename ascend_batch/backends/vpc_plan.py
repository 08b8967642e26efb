"""The VPC steps that turn JPEGD's picture into the CPU path's crop, as exactly as VPC's rules allow.

The CPU path (:mod:`ascend_batch.preprocess`) resizes the short side to ``pp.resize`` with Pillow's
antialiased filter and keeps the centre ``pp.size`` square: output pixel ``j`` comes from a
fractional source box. VPC only takes integer ROIs whose left/top are even and right/bottom odd, and
its bilinear filter (interpolation 1, OpenCV's ``INTER_LINEAR``) samples two taps whatever the scale,
so one crop+resize straight to the model size misplaces the crop by up to a pixel and a half and
aliases fine texture (``tests/test_vpc_plan.py`` compares both with the CPU path's pixels; the figures
are in ``docs/backends.md``).

The plan, each step one VPC crop+resize on the same stream:

1. **Halvings** while the remaining scale is below 1/2: an even-aligned ROI around the crop box, its
   width and height multiples of 4, scaled by exactly 1/2. Bilinear at exactly 2:1 with aligned pixel
   centres averages each 2 x 2 block, so this is a box filter and the coordinates stay exact. (A box
   spanning a whole side 2 (mod 4) long is scaled to one pixel more than half instead.)
2. **Main**: a ROI around the box, scaled to a canvas where the box lands on an even-aligned window
   of ``f * pp.size`` pixels (``f = 2`` when downscaling, else 1). ROI bounds, canvas size and window
   offset are searched so that the window maps back onto the box: within half an output pixel (a
   tenth on typical photos), within one where a tiny image is scaled up over 4x.
3. **Final**: that window, scaled by ``1/f`` into the model-size output (2:1 again: a box filter).

Pure integer geometry, no pyACL: :func:`plan` is tested on its own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..preprocess import Preprocess, resize_crop_geometry

VPC_MAX_OUT = 4096  # the widest/highest VPC output
VPC_MAX_SCALE = 16  # and its scale limits: 1/32..16 (kept to 1/16..16 here)
SEARCH = (16, 128)  # candidate ROI starts and ends per axis in the main step ...
WIDE_SEARCH = (256, 256)  # ... and where that leaves the crop over a quarter of an output pixel off
_MARGIN = 32  # pixels kept around the box by a halving, so that the main step has room to search


@dataclass(frozen=True)
class Axis:
    """One axis of one step: the inclusive ROI ``[first, last]`` of the step's input and the length
    ``out`` it is scaled to."""

    first: int
    last: int
    out: int


@dataclass(frozen=True)
class VpcStep:
    """One VPC crop+resize: ROI ``x.first..x.last`` by ``y.first..y.last`` of the previous step's
    picture (JPEGD's, for the first step), scaled to ``x.out`` x ``y.out``."""

    x: Axis
    y: Axis

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` as ``dvpp_create_roi_config`` takes them."""
        return self.x.first, self.x.last, self.y.first, self.y.last

    @property
    def out_size(self) -> tuple[int, int]:
        return self.x.out, self.y.out


@dataclass(frozen=True)
class Plan:
    steps: tuple[VpcStep, ...]
    error: float  # the largest distance, in output pixels, between the crop's edges and the CPU path's


def _even_floor(v: float) -> int:
    return math.floor(v / 2) * 2


def _even_ceil(v: float) -> int:
    return math.ceil(v / 2) * 2


def cpu_box(width: int, height: int, pp: Preprocess) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the source box the CPU path's centre crop is resampled from (as
    ``preprocess._resize_crop`` computes it)."""
    new_w, new_h, left, top = resize_crop_geometry(width, height, pp)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + pp.size) * sx, (top + pp.size) * sy


def _halve(n: int, a: float, b: float, margin: int) -> tuple[Axis, float, float]:
    """A halving ROI on an axis of length ``n`` around ``[a, b)``: even start, a multiple of 4 long
    (so the half is even), with ``margin`` pixels around the box where the picture has them. A box
    spanning a picture 2 (mod 4) long keeps every pixel: scaled to one more than half (just over
    1/2, so VPC's bilinear is still nearly a box filter)."""
    first = max(0, _even_floor(a - margin))
    end = min(n, _even_ceil(b + margin))
    if (end - first) % 4:
        if end + 2 <= n:
            end += 2
        elif first >= 2:
            first -= 2
        elif b <= end - 2:  # the margins are the picture's edges: give up two pixels of one
            end -= 2
        elif a >= first + 2:
            first += 2
    out = (end - first) // 2
    if out % 2:  # the box spans a whole side 2 (mod 4) long
        out += 1
    per = (end - first) / out
    return Axis(first, end - 1, out), (a - first) / per, (b - first) / per


def _main(n: int, a: float, b: float, window: int, search: tuple[int, int]) -> tuple[Axis, int, float]:
    """The main step on one axis: ROI, canvas length and even window offset such that the canvas'
    ``[offset, offset + window)`` maps back onto ``[a, b)``; returns the worst edge error too. The
    candidates (ROI starts left of the box, ROI ends right of it, canvas and offset rounded both
    ways) are scored at once with numpy."""
    scale = window / (b - a)
    starts = _even_floor(min(a, n - 2)) - 2 * np.arange(search[0])
    ends = _even_ceil(b) + 2 * np.arange(search[1])
    grid = np.meshgrid(starts[starts >= 0], ends[ends <= n], indexing="ij")
    first, end = grid[0].ravel(), grid[1].ravel()
    span = end - first
    best: tuple[float, int, int, int, int] | None = None
    for canvas_step in (-2, -1, 0, 1):  # even canvas lengths around span * scale
        canvas = ((np.floor(span * scale / 2) + canvas_step) * 2).astype(np.int64)
        per = span / np.maximum(canvas, 1)
        for round_offset in (np.floor, np.ceil):
            offset = (round_offset((a - first) / per / 2) * 2).astype(np.int64)
            lo = first + offset * per
            err = np.maximum(np.abs(lo - a), np.abs(lo + window * per - b))
            ok = (canvas >= window) & (canvas <= VPC_MAX_OUT) & (offset >= 0) & (offset + window <= canvas)
            ok &= (canvas <= span * VPC_MAX_SCALE) & (canvas * VPC_MAX_SCALE >= span)
            if not ok.any():
                continue
            k = int(np.argmin(np.where(ok, err, np.inf)))
            if best is None or float(err[k]) < best[0]:
                best = (float(err[k]), int(first[k]), int(end[k]), int(canvas[k]), int(offset[k]))
    if best is None:  # no room to search (a box flush with a tiny picture): the whole axis, no offset
        return Axis(0, n - 1, window), 0, max(abs(a), abs(b - n))
    worst, lo_px, end_px, canvas_px, offset_px = best
    return Axis(lo_px, end_px - 1, canvas_px), offset_px, worst


@functools.lru_cache(maxsize=4096)
def plan(width: int, height: int, pp: Preprocess) -> Plan:
    """The VPC steps from JPEGD's picture of a ``width`` x ``height`` JPEG to a ``pp.size`` square that
    matches the CPU path's resize and centre crop. The box comes from the image's own size; JPEGD's
    NV12 picture is that size rounded down to even (an odd last row or column is not in it)."""
    x0, y0, x1, y1 = cpu_box(width, height, pp)
    size = pp.size
    steps: list[VpcStep] = []
    n_x, n_y = width & ~1, height & ~1
    scale = size / max(x1 - x0, y1 - y0)
    halvings = 0
    while scale * 2**halvings < 0.5:  # the box is then over twice the output: its half still covers it
        halvings += 1
    for i in range(halvings):  # the margin the main step searches in survives every halving
        margin = _MARGIN * 2 ** (halvings - 1 - i)
        ax, x0, x1 = _halve(n_x, x0, x1, margin)
        ay, y0, y1 = _halve(n_y, y0, y1, margin)
        steps.append(VpcStep(ax, ay))
        n_x, n_y, scale = ax.out, ay.out, scale * 2
    best: tuple[float, VpcStep, VpcStep] | None = None
    for search in (SEARCH, WIDE_SEARCH):
        for factor in (2,) if scale < 1 else (1, 2):  # upscaling: straight, unless 2x lands the box closer
            window = factor * size
            mx, off_x, err_x = _main(n_x, x0, x1, window, search)
            my, off_y, err_y = _main(n_y, y0, y1, window, search)
            error = max(err_x / (x1 - x0), err_y / (y1 - y0)) * size  # in output pixels
            final = VpcStep(Axis(off_x, off_x + window - 1, size), Axis(off_y, off_y + window - 1, size))
            if best is None or error < best[0] - 0.05:
                best = (error, VpcStep(mx, my), final)
        if best is not None and best[0] <= 0.25:
            break
    assert best is not None
    return Plan((*steps, best[1], best[2]), best[0])
