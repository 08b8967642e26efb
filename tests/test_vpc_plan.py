"""The VPC plan of the DVPP decode: every step within VPC's rules, and the crop where the CPU path's is.

Geometry is checked by composing the steps' coordinate maps back to the source, independently of the
error the plan reports; pixels by running the plan with the emulator's VPC resize (tests/fakes/acl,
OpenCV-style bilinear, as CANN documents interpolation 1) against the CPU path's Pillow crop.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ascend_batch.backends.vpc_plan import VPC_MAX_OUT, Plan, cpu_box, plan
from ascend_batch.preprocess import Preprocess, decode_pixels

PP = Preprocess(size=224, resize=256)


def check_rules(p: Plan, width: int, height: int, size: int) -> None:
    """What the emulated (and documented) VPC would refuse, step by step."""
    n_x, n_y = width & ~1, height & ~1
    for step in p.steps:
        left, right, top, bottom = step.roi
        assert left % 2 == 0 and top % 2 == 0 and right % 2 == 1 and bottom % 2 == 1, step
        assert 0 <= left < right < n_x and 0 <= top < bottom < n_y, (step, n_x, n_y)
        rw, rh = right - left + 1, bottom - top + 1
        assert rw >= 10 and rh >= 6
        w, h = step.out_size
        assert w % 2 == 0 and h % 2 == 0 and 10 <= w <= VPC_MAX_OUT and 6 <= h <= VPC_MAX_OUT
        assert 1 / 32 <= w / rw <= 16 and 1 / 32 <= h / rh <= 16
        n_x, n_y = w, h
    assert p.steps[-1].out_size == (size, size)
    for step in p.steps[:-2]:  # halvings: 2:1, so bilinear is a 2x2 box average (or a pixel over, see plan)
        for ax in (step.x, step.y):
            assert ax.out in ((ax.last - ax.first + 1) // 2, (ax.last - ax.first + 1) // 2 + 1)


def source_box(p: Plan, size: int) -> tuple[float, float, float, float]:
    """Where the output's edges come from in the source, composing each step's map."""
    lo_x, hi_x, lo_y, hi_y = 0.0, float(size), 0.0, float(size)
    for step in reversed(p.steps):
        w, h = step.out_size
        fx = (step.x.last + 1 - step.x.first) / w
        fy = (step.y.last + 1 - step.y.first) / h
        lo_x, hi_x = step.x.first + lo_x * fx, step.x.first + hi_x * fx
        lo_y, hi_y = step.y.first + lo_y * fy, step.y.first + hi_y * fy
    return lo_x, lo_y, hi_x, hi_y


def allowed(width: int, height: int, pp: Preprocess) -> float:
    """Half an output pixel (a whole one for a crop scaled up over 4x: few ROI and canvas lengths to
    choose from), plus what of the box lies in an odd last column or row, which is not in JPEGD's
    (even-sized) picture."""
    x0, y0, x1, y1 = cpu_box(width, height, pp)
    over_x = max(0.0, x1 - (width & ~1)) / ((x1 - x0) / pp.size)
    over_y = max(0.0, y1 - (height & ~1)) / ((y1 - y0) / pp.size)
    upscale = pp.size / min(x1 - x0, y1 - y0)
    return (1.0 if upscale > 4 else 0.5) + max(over_x, over_y)


PPS = [Preprocess(size=s, resize=r) for s, r in [(224, 256), (224, 224), (32, 36), (320, 320), (384, 438)]]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PPS), st.integers(32, 8192), st.integers(32, 8192))
def test_every_step_is_legal_and_the_crop_is_the_cpu_paths(pp: Preprocess, width: int, height: int) -> None:
    p = plan(width, height, pp)
    check_rules(p, width, height, pp.size)
    want = cpu_box(width, height, pp)
    got = source_box(p, pp.size)
    per_x, per_y = (want[2] - want[0]) / pp.size, (want[3] - want[1]) / pp.size  # source px per output px
    worst = max(abs(got[0] - want[0]) / per_x, abs(got[2] - want[2]) / per_x,
                abs(got[1] - want[1]) / per_y, abs(got[3] - want[3]) / per_y)  # fmt: skip
    assert worst == pytest.approx(p.error, abs=1e-6)
    # within half an output pixel; the single ROI of VPC's parity rules was up to 1.5 source pixels off
    assert p.error < allowed(width, height, pp)


@pytest.mark.parametrize(("size", "resize"), [(224, 256), (224, 224), (32, 36), (320, 320), (384, 438)])
@pytest.mark.parametrize(
    ("width", "height"), [(500, 375), (375, 500), (4000, 3000), (33, 97), (8192, 40), (257, 255), (44, 4902), (58, 61)]
)
def test_other_model_sizes(size: int, resize: int, width: int, height: int) -> None:
    pp = Preprocess(size=size, resize=resize)
    p = plan(width, height, pp)
    check_rules(p, width, height, size)
    assert p.error < allowed(width, height, pp)


@pytest.fixture
def vpc_resize(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., np.ndarray]]:
    """The emulator's VPC resize (tests/fakes/acl), imported for this test only."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fakes"))
    from acl import _pixels

    yield _pixels.resize_bilinear
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        del sys.modules[name]


def texture(width: int, height: int, seed: int = 5) -> np.ndarray:
    """A photo-like test picture: smooth shading plus fine detail near VPC's Nyquist limit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    fine = 40 * np.sin(xx * 0.9 + yy * 0.35)  # a short wavelength: aliases if a resize only samples
    noise = rng.normal(0, 6, size=(height, width))
    return np.clip(base + fine + noise, 0, 255).astype(np.uint8)


def straight_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """The baseline: one VPC crop+resize of the legal ROI (even left/top, odd right/bottom) nearest
    the CPU path's box, straight to the model size."""
    x0, y0, x1, y1 = cpu_box(width, height, PP)

    def span(lo: float, hi: float, n: int) -> tuple[int, int]:
        return round(lo / 2) * 2, min(round(hi / 2) * 2, n) - 1

    return (*span(x0, x1, width & ~1), *span(y0, y1, height & ~1))


@pytest.mark.parametrize(("width", "height"), [(500, 375), (1600, 1200), (4032, 3024)])
def test_plan_pixels_match_the_cpu_crop(vpc_resize: Callable[..., np.ndarray], width: int, height: int) -> None:
    grey = texture(width, height)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    want = decode_pixels(buf.getvalue(), PP).hwc[..., 0].astype(np.float64)  # the CPU path (grey: R = Y)
    picture = grey[: height & ~1, : width & ~1]
    y = picture
    for step in plan(width, height, PP).steps:
        left, right, top, bottom = step.roi
        y = vpc_resize(y[top : bottom + 1, left : right + 1], step.out_size[1], step.out_size[0])
    left, right, top, bottom = straight_crop(width, height)
    straight = vpc_resize(picture[top : bottom + 1, left : right + 1], PP.size, PP.size)
    ours = np.abs(y.astype(np.float64) - want).mean()
    baseline = np.abs(straight.astype(np.float64) - want).mean()
    # measured: 0.8 / 4.0 / 0.7 grey levels from the CPU path's pixels, against 18 / 21 / 24 for the
    # straight crop (misplaced by up to a pixel and aliased: two taps at any scale)
    assert ours < baseline / 4 and ours < 5, (ours, baseline)
