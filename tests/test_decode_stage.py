"""The CPU decode stage: a stuck decode is timed out alone, and running out of memory is the
machine's failure, never an image's row."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from ascend_batch.errors import DecodeOutOfMemory, ImageError
from ascend_batch.preprocess import Pixels, Preprocess, decode_pixels
from ascend_batch.runner import stages
from ascend_batch.runner.messages import Cause, TaskStats
from ascend_batch.runner.worker import failure_cause
from ascend_batch.sources import Item

PP = Preprocess(size=8, resize=8)


def samples(datas: list[bytes]) -> Iterator[stages.Sample]:
    for i, data in enumerate(datas):
        yield stages.Sample(i, Item(f"img{i}.jpg", "src", "file", f"/src/img{i}.jpg"), data=data)


@pytest.fixture
def fake_decode(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """decode_pixels stand-in: ``hang`` blocks until the returned event is set (a decode stuck in C
    code cannot be interrupted), ``oom`` raises MemoryError, anything else decodes at once."""
    release = threading.Event()

    def decode(data: bytes, pp: Preprocess, max_pixels: int) -> Pixels:
        if data == b"hang":
            release.wait(30)
        if data == b"oom":
            raise MemoryError
        return Pixels(np.zeros((pp.size, pp.size, 3), np.uint8), 8, 8)

    monkeypatch.setattr(stages, "decode_pixels", decode)
    yield release
    release.set()


@pytest.mark.parametrize("workers", [1, 2])
def test_only_the_stuck_decode_times_out_not_the_images_queued_behind_it(
    fake_decode: threading.Event, workers: int
) -> None:
    pool = stages.DecodePool(workers)
    datas = [b"hang", b"a", b"b", b"hang", b"c", b"d", b"e"]
    stats = TaskStats()
    try:
        out = list(stages.decode_cpu(samples(datas), pool, window=len(datas), pp=PP, max_pixels=10**6,
                                     timeout=0.3, stats=stats))  # fmt: skip
    finally:
        pool.shutdown()
    errors = {s.image_id: s.error for s in out if s.error}
    assert errors == {
        "img0.jpg": "timeout: decoding took longer than 0.3 s",
        "img3.jpg": "timeout: decoding took longer than 0.3 s",
    }
    assert [s.pos for s in out] == list(range(len(datas)))  # listing order kept
    assert stats.decoded["cpu"] == 5


def test_the_time_limit_counts_from_when_a_decode_starts() -> None:
    pool = stages.DecodePool(1)
    gate = threading.Event()
    try:
        first = pool.submit(lambda: gate.wait(5) and "first")
        second = pool.submit(lambda: "second")
        threading.Timer(0.4, gate.set).start()  # the first runs 0.4 s, under its 1 s limit
        assert pool.result(first, 1.0) == "first"
        assert pool.result(second, 0.2) == "second"  # queued 0.4 s, longer than its own limit
    finally:
        gate.set()
        pool.shutdown()


def test_out_of_memory_while_decoding_stops_the_task_naming_the_image(fake_decode: threading.Event) -> None:
    pool = stages.DecodePool(2)
    try:
        with pytest.raises(DecodeOutOfMemory) as info:
            list(stages.decode_cpu(samples([b"a", b"oom", b"b"]), pool, 3, PP, 10**6, 5.0, TaskStats()))
    finally:
        pool.shutdown()
    cause, message = failure_cause(info.value)
    assert cause is Cause.ENVIRONMENT
    assert "out of memory decoding img1.jpg" in message and "dataset.max_pixels" in message


def test_decode_lets_memory_errors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")

    def no_memory(*args: object, **kw: object) -> None:
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", no_memory)
    with pytest.raises(MemoryError):
        decode_pixels(buf.getvalue(), PP)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _gradient_png() -> bytes:
    a = (np.add.outer(np.arange(120), np.arange(160)) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([a, a[::-1], a * 3], -1)).save(buf, "PNG")
    return buf.getvalue()


def test_a_png_cut_short_and_padded_is_a_decode_error_not_grey_pixels() -> None:
    png = _gradient_png()
    padded = png[: len(png) // 2] + b"\0" * (len(png) - len(png) // 2)
    with pytest.raises(ImageError, match=r"decode: damaged PNG file: (its IDAT chunk|invalid chunk type)"):
        decode_pixels(padded, PP)


def test_a_bit_flipped_in_png_image_data_is_a_decode_error() -> None:
    png = bytearray(_gradient_png())
    png[png.index(b"IDAT") + 40] ^= 0x01
    with pytest.raises(ImageError, match="decode: damaged PNG file: its IDAT chunk at byte 33 fails its CRC"):
        decode_pixels(bytes(png), PP)


def test_a_bad_checksum_on_a_text_chunk_after_the_image_data_is_tolerated_as_libpng_does() -> None:
    png = _gradient_png()
    text = _chunk(b"tEXt", b"Comment\0hello")
    text = text[:-4] + b"\0\0\0\0"  # wrong CRC on a text chunk
    at = png.index(b"IEND") - 4
    assert decode_pixels(png[:at] + text + png[at:], PP).width == 160


def test_an_icon_is_held_to_max_pixels_by_its_frames_own_size_before_decoding() -> None:
    w = h = 4000  # the icon directory says 16x16; its PNG frame is 4000x4000
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * (w * 3 + 1) * h, 1))
        + _chunk(b"IEND", b"")
    )
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
    with pytest.raises(ImageError, match=r"too-large: icon frame 1 is 4000x4000 = 16000000 pixels"):
        decode_pixels(ico, PP, max_pixels=1_000_000)
    assert decode_pixels(ico, PP, max_pixels=16_000_000).width == 4000
