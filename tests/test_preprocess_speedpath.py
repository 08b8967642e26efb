"""The runner's fast preprocessing path (decode to pixels, normalise into the batch buffer) gives the
same tensors as the reference recipe, and the bench's plain-script baseline preprocesses the same way."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ascend_batch.bench import plain_preprocess
from ascend_batch.preprocess import Preprocess, decode, decode_pixels, normalise, normalise_into

IMAGENET = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}


def photo_like(w: int, h: int, seed: int, fmt: str = "JPEG") -> bytes:
    """A smooth random image (gradients plus noise), encoded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (w + h))], axis=-1)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def reference(hwc: np.ndarray, pp: Preprocess) -> np.ndarray:
    """``(x - mean) / std`` in float32 on a fresh array, then layout and dtype (the textbook recipe)."""
    x = hwc.astype(np.float32)
    if pp.dtype != "uint8":
        x = (x - np.asarray(pp.mean, np.float32)) * (np.float32(1.0) / np.asarray(pp.std, np.float32))
    if pp.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x).astype(pp.numpy_dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("stats", [{}, IMAGENET])
def test_normalise_into_a_batch_slot_equals_the_reference(layout: str, dtype: str, stats: dict) -> None:
    pp = Preprocess(layout=layout, dtype=dtype, **stats)
    hwc = np.random.default_rng(1).integers(0, 256, (pp.size, pp.size, 3), dtype=np.uint8)
    batch = np.full(pp.input_shape(3), 99, dtype=pp.numpy_dtype)
    normalise_into(hwc, pp, batch[1])
    want = reference(hwc, pp)
    assert np.array_equal(batch[1], want)
    assert (batch[0] == 99).all() and (batch[2] == 99).all()  # neighbouring slots untouched
    single = normalise(hwc, pp)
    assert single.flags.c_contiguous and np.array_equal(single, want)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (300, 300), (160, 120)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_pixels_then_normalise_is_decode_and_matches_the_plain_recipe(size: tuple[int, int], fmt: str) -> None:
    data = photo_like(*size, seed=sum(size), fmt=fmt)
    pp = Preprocess()
    px = decode_pixels(data, pp)
    assert px.hwc.dtype == np.uint8 and px.hwc.shape == (224, 224, 3) and (px.width, px.height) == size
    full = decode(data, pp)
    assert np.array_equal(normalise(px.hwc, pp), full.array)
    # the crop-aware resize reproduces resize-then-crop up to rounding: at most one grey level
    plain = plain_preprocess(data, pp)
    assert plain.shape == full.array.shape and plain.dtype == full.array.dtype
    assert np.abs(plain - full.array).max() <= 1.0 / 128 + 1e-6
