"""JPEG decode on the GPU for the torch backend on CUDA: torchvision's batched ``decode_jpeg`` (nvJPEG),
then resize / centre crop / normalise on the GPU, with a per-batch CPU fallback.

What the measurements in ``notes/gpu-decode.md`` ask for, and where it is done here:

* bounded batches: at most ``max_batch`` images and ``max_batch_pixels`` pixels per decoder call;
* a CPU fallback: files the GPU decoder should not see (progressive, arithmetic or lossless JPEGs,
  CMYK/YCCK or Adobe-RGB JPEGs, 12-bit, EXIF-rotated, truncated, PNG and every other format) are sniffed
  from their headers (:mod:`.jpeg_sniff`) and go through the CPU path (``preprocess.decode``) unchanged;
  a chunk the GPU decoder refuses goes to the CPU path as a whole;
* the GPU decoder is untrusted: after its first failure it is switched off for the rest of the process
  (``disabled`` says why), and if the failure left the CUDA context broken, :class:`GpuDecodeFatal` is
  raised so the worker exits and the supervisor replaces it (never retried in the same process).

The geometry is the CPU path's (``preprocess.resize_crop_geometry``): short side to ``pp.resize`` (Python
``round``), centre crop ``pp.size``, 8-bit rounding after the resize, then ``(x - mean) / std``. Bilinear
and bicubic use ``antialias=True``, torch's port of Pillow's filters; ``nearest`` uses ``nearest-exact``;
``lanczos`` has no GPU equivalent (:func:`supports` is false). Large JPEGs differ slightly from the CPU
path, which decodes them at reduced DCT scale (Pillow ``draft``); top-5 agrees on ordinary images.

Imports torch (and torchvision lazily); only the torch backend imports this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BackendError, ImageError
from ..preprocess import DEFAULT_MAX_PIXELS, Decoded, Preprocess, decode, resize_crop_geometry
from .jpeg_sniff import GPU_MAX_PIXELS, JpegInfo, gpu_refusal, sniff_jpeg
from .prefetch import prefetched

__all__ = [
    "GPU_MAX_PIXELS",
    "DecoderStats",
    "GpuBatch",
    "GpuDecodeFatal",
    "GpuJpegDecoder",
    "JpegInfo",
    "available",
    "cpu_decoder",
    "gpu_refusal",
    "prefetched",
    "resize_crop_normalise",
    "sniff_jpeg",
    "supports",
]

CpuDecode = Callable[[list[bytes]], list["Decoded | ImageError"]]
K = TypeVar("K")
DecodeFn = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]

_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}


class GpuDecodeFatal(BackendError):
    """The GPU decoder broke the process's CUDA context: the worker must be replaced."""


# --------------------------------------------------------------------------- preprocessing


def supports(pp: Preprocess) -> bool:
    """Whether the GPU path can reproduce ``pp`` (every interpolation except lanczos)."""
    return pp.interpolation in _INTERPOLATION


def resize_crop_normalise(
    img: torch.Tensor, pp: Preprocess, mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """uint8 ``(C, H, W)`` RGB (C = 3, or 1 for grey) on any device -> one sample in ``pp``'s layout and
    dtype, as the CPU path makes it. ``mean_std``: ``(3, 1, 1)`` float32 tensors on the image's device
    (made per call when not given)."""
    _, h, w = img.shape
    new_w, new_h, left, top = resize_crop_geometry(w, h, pp)
    x = img.unsqueeze(0)
    if (new_w, new_h) != (w, h):
        mode = _INTERPOLATION[pp.interpolation]
        kwargs: dict[str, Any] = {"antialias": True, "align_corners": False} if mode != "nearest-exact" else {}
        x = F.interpolate(x.float(), size=(new_h, new_w), mode=mode, **kwargs).round_().clamp_(0, 255)
    x = x[0, :, top : top + pp.size, left : left + pp.size]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if pp.dtype == "uint8":
        out = x.to(torch.uint8)
    else:
        mean, std = mean_std if mean_std is not None else _mean_std(pp, x.device)
        out = (x.float() - mean) / std
        if pp.dtype == "float16":
            out = out.half()
    if pp.layout == "NHWC":
        out = out.permute(1, 2, 0)
    return out.contiguous()


def _mean_std(pp: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(pp.mean, dtype=torch.float32).view(3, 1, 1).to(device)
    std = torch.tensor(pp.std, dtype=torch.float32).view(3, 1, 1).to(device)
    return mean, std


# --------------------------------------------------------------------------- decoder


def available() -> bool:
    """True when CUDA is usable and torchvision's ``decode_jpeg`` can be imported."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def _torchvision_decode(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def cpu_decoder(pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> CpuDecode:
    """The plain CPU path as a batch function (sequential; the worker may pass its thread pool's)."""

    def run(datas: list[bytes]) -> list[Decoded | ImageError]:
        out: list[Decoded | ImageError] = []
        for data in datas:
            try:
                out.append(decode(data, pp, max_pixels))
            except ImageError as exc:
                out.append(exc)
        return out

    return run


@dataclass
class GpuBatch:
    """One decoded batch. ``tensor`` holds one row per image that decoded (GPU or CPU), in input order,
    already on the device in ``pp``'s layout and dtype; ``rows[k]`` is the input position of row ``k``;
    ``results[i]`` is ``(width, height)`` of input ``i`` or its :class:`ImageError`. ``ready`` is an event
    on the decoder's stream: consumers on another stream wait for it (``TorchSession.submit_tensor``)."""

    tensor: torch.Tensor
    rows: list[int]
    results: list[tuple[int, int] | ImageError]
    ready: Any = None
    gpu: int = 0
    cpu: int = 0


@dataclass
class DecoderStats:
    gpu_images: int = 0
    cpu_images: int = 0
    gpu_failures: int = 0
    cpu_reasons: dict[str, int] = field(default_factory=dict)


class GpuJpegDecoder:
    """Bytes of up to a batch of images -> a :class:`GpuBatch` on ``device``.

    ``decode_fn`` (tests) replaces torchvision's ``decode_jpeg``; with a CPU ``device`` the whole
    pipeline runs without CUDA, streams and events, which is how its logic is tested here.
    """

    def __init__(
        self,
        pp: Preprocess,
        device: torch.device,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch: int = 64,
        max_batch_pixels: int = 256_000_000,
        gpu_max_pixels: int = GPU_MAX_PIXELS,
        decode_fn: DecodeFn | None = None,
    ) -> None:
        if not supports(pp):
            raise ValueError(f"GPU preprocessing has no {pp.interpolation!r} interpolation")
        self.pp = pp
        self.device = device
        self.max_pixels = max_pixels
        self.max_batch = max(1, max_batch)
        self.max_batch_pixels = max_batch_pixels
        self.gpu_max_pixels = gpu_max_pixels
        self._decode_fn: DecodeFn = decode_fn or _torchvision_decode
        self._cuda = device.type == "cuda"
        self.stream: Any = torch.cuda.Stream(device) if self._cuda else None
        self.disabled: str | None = None  # why the GPU decoder is off for the rest of the process
        self.stats = DecoderStats()
        self._dtype = torch.from_numpy(np.empty(0, dtype=pp.numpy_dtype)).dtype
        self._mean_std = _mean_std(pp, device)

    def _stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.stream) if self._cuda else contextlib.nullcontext()

    def decode(self, datas: Sequence[bytes], cpu_decode: CpuDecode | None = None) -> GpuBatch:
        """Decode and preprocess ``datas``; every input ends as a row of the tensor or an error."""
        cpu_decode = cpu_decode or cpu_decoder(self.pp, self.max_pixels)
        n = len(datas)
        results: list[tuple[int, int] | ImageError | None] = [None] * n
        samples: dict[int, torch.Tensor] = {}
        gpu_idx, cpu_idx = self._route(datas)
        with self._stream():
            for chunk in self._chunks(datas, gpu_idx):
                decoded = self._gpu_chunk(datas, chunk)
                if decoded is None:
                    cpu_idx.extend(chunk)
                    continue
                for pos, img in zip(chunk, decoded, strict=True):
                    samples[pos] = resize_crop_normalise(img, self.pp, self._mean_std)
                    results[pos] = (int(img.shape[-1]), int(img.shape[-2]))
            gpu_count = len(samples)
            cpu_idx.sort()
            if cpu_idx:
                fallback = cpu_decode([datas[i] for i in cpu_idx])
                ok: list[tuple[int, Decoded]] = []
                for pos, res in zip(cpu_idx, fallback, strict=True):
                    if isinstance(res, ImageError):
                        results[pos] = res
                    else:
                        results[pos] = (res.width, res.height)
                        ok.append((pos, res))
                if ok:
                    host = torch.from_numpy(np.stack([d.array for _, d in ok]))
                    if self._cuda:
                        host = host.pin_memory()
                    dev = host.to(self.device, non_blocking=True)
                    for k, (pos, _) in enumerate(ok):
                        samples[pos] = dev[k]
            rows = sorted(samples)
            shape = self.pp.input_shape(len(rows))
            tensor = torch.empty(shape, dtype=self._dtype, device=self.device)
            for k, pos in enumerate(rows):
                tensor[k].copy_(samples[pos])
            ready = None
            if self._cuda:
                ready = torch.cuda.Event()
                ready.record(self.stream)
        self.stats.gpu_images += gpu_count
        self.stats.cpu_images += len(rows) - gpu_count
        final = [r if r is not None else ImageError("decode", "no result") for r in results]
        return GpuBatch(tensor, rows, final, ready, gpu=gpu_count, cpu=len(rows) - gpu_count)

    def _route(self, datas: Sequence[bytes]) -> tuple[list[int], list[int]]:
        gpu_idx: list[int] = []
        cpu_idx: list[int] = []
        for i, data in enumerate(datas):
            reason = self.disabled or gpu_refusal(sniff_jpeg(data), self.max_pixels, self.gpu_max_pixels)
            if reason is None:
                gpu_idx.append(i)
            else:
                cpu_idx.append(i)
                key = "gpu decoder disabled" if self.disabled else reason
                self.stats.cpu_reasons[key] = self.stats.cpu_reasons.get(key, 0) + 1
        return gpu_idx, cpu_idx

    def _chunks(self, datas: Sequence[bytes], idx: list[int]) -> Iterator[list[int]]:
        """``idx`` in bounded chunks: at most ``max_batch`` images and ``max_batch_pixels`` pixels."""
        chunk: list[int] = []
        pixels = 0
        for i in idx:
            info = sniff_jpeg(datas[i])
            p = info.width * info.height if info else 0
            if chunk and (len(chunk) >= self.max_batch or pixels + p > self.max_batch_pixels):
                yield chunk
                chunk, pixels = [], 0
            chunk.append(i)
            pixels += p
        if chunk:
            yield chunk

    def _gpu_chunk(self, datas: Sequence[bytes], chunk: list[int]) -> list[torch.Tensor] | None:
        """The decoded images of ``chunk``, or ``None`` when the GPU decoder refused it (the caller sends
        the chunk to the CPU). Raises :class:`GpuDecodeFatal` when the CUDA context is broken."""
        if self.disabled:
            return None
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in chunk]
        try:
            images = self._decode_fn(encoded, self.device)
            if len(images) != len(chunk):
                raise RuntimeError(f"decoder returned {len(images)} images for {len(chunk)} inputs")
            return images
        except RuntimeError as exc:
            self.stats.gpu_failures += 1
            self.disabled = f"GPU JPEG decoder failed ({str(exc).strip().splitlines()[0] if str(exc) else exc!r})"
            self._check_context(exc)
            return None

    def _check_context(self, cause: BaseException) -> None:
        if not self._cuda:
            return
        try:
            torch.cuda.synchronize(self.device)
        except RuntimeError as exc:
            raise GpuDecodeFatal(
                f"device {self.device}: the GPU JPEG decoder broke the CUDA context ({cause}; then {exc}); "
                "the worker must be restarted"
            ) from exc
