"""Fuzz decode() with mutated JPEG and PNG bytes: only ImageError may escape, and each case ends
quickly. Deterministic (derandomize, no example database)."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ascend_batch.errors import ImageError
from ascend_batch.preprocess import Preprocess, decode

PP = Preprocess()
KINDS = {"empty", "format", "decode", "too-large"}


def _sample() -> Image.Image:
    rng = np.random.default_rng(7)
    x = np.linspace(0, 255, 96)
    y = np.linspace(0, 255, 64)
    arr = np.stack([np.add.outer(y * 0, x), np.add.outer(y, x * 0), rng.integers(0, 256, (64, 96))], axis=-1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _encode(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img = _sample()
    if params.pop("rgba", False):
        img = img.convert("RGBA")
    img.save(buf, fmt, **params)
    return buf.getvalue()


SEEDS = {
    "jpeg": _encode("JPEG", quality=85),
    "jpeg-progressive": _encode("JPEG", quality=85, progressive=True),
    "png": _encode("PNG"),
    "png-rgba-interlaced": _encode("PNG", rgba=True, interlace=1),
}


@st.composite
def mutated(draw: st.DrawFn, names: tuple[str, ...]) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "delete"]))
        if not data:
            break
        low = min(draw(st.sampled_from([0, 16, 64, 256])), len(data) - 1)  # mostly past the signature
        pos = draw(st.integers(low, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        else:
            del data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


def check(data: bytes) -> None:
    try:
        out = decode(data, PP)
    except ImageError as exc:  # the only exception allowed out
        assert exc.kind in KINDS, exc
        return
    assert out.array.shape == (3, 224, 224)
    assert out.array.dtype == np.float32
    assert np.isfinite(out.array).all()
    assert out.width > 0 and out.height > 0


FUZZ = settings(
    max_examples=150,
    deadline=2000,  # milliseconds per case
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(mutated(("jpeg", "jpeg-progressive")))
def test_mutated_jpeg_raises_only_image_error(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated(("png", "png-rgba-interlaced")))
def test_mutated_png_raises_only_image_error(data: bytes) -> None:
    check(data)


def test_seeds_decode() -> None:
    for data in SEEDS.values():
        assert decode(data, PP).width == 96
