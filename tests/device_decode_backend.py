"""A test backend plugin (``device_decode_backend:DeviceDecodeBackend``): the torch backend on the CPU,
whose sessions offer a "GPU" JPEG decoder that runs on the CPU, with Pillow standing in for nvJPEG.
It drives the worker's device-decode path (batched decode, per-file CPU fallback, tensors handed to
``submit_tensor``) where no GPU exists. Every stand-in decode call appends a line to
``$DEVICE_DECODE_LOG``."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ascend_batch.backends import gpu_decode
from ascend_batch.backends.base import SessionFeatures
from ascend_batch.backends.torch import TorchBackend, TorchSession


def pil_decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    log = os.environ.get("DEVICE_DECODE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{len(encoded)}\n")
    out = []
    for t in encoded:
        arr = np.array(Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB"))
        out.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(device))
    return out


class DeviceDecodeSession(TorchSession):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.features = SessionFeatures(device_decode=True)  # a "GPU" decoder, on the CPU

    def device_decoder(self, max_pixels: int, max_batch: int = 64) -> Any:
        return gpu_decode.GpuJpegDecoder(
            self.model.preprocess, torch.device("cpu"), max_pixels=max_pixels, max_batch=max_batch, decode_fn=pil_decode
        )


class DeviceDecodeBackend(TorchBackend):
    def open(self, device, model, *, batch_size, threads):  # type: ignore[no-untyped-def]
        options = self.options if self.options is not None else None
        return DeviceDecodeSession(device, model, batch_size=batch_size, threads=threads, options=options or _opts())


def _opts() -> Any:
    from ascend_batch.backends.torch import TorchOptions

    return TorchOptions.from_env()
