"""Static AIPP for emulated ``.om`` models: the sidecar's ``"aipp"`` table, with the key names and
meaning of ATC's ``aipp.cfg`` (``aipp_op``), and AIPP's arithmetic as CANN's ATC guide states it.

An AIPP model's input 0 is uint8 YUV420SP (NV12; NV21 with ``rbuv_swap_switch``) of
``src_image_size_w x src_image_size_h``: ``batch * w * h * 3 // 2`` bytes, images back to back,
no stride padding. Before the ONNX graph runs on its float input, per pixel:

1. chroma upsampled to full resolution (nearest: each U/V sample covers its 2x2 block; emulator
   choice, the hardware's filter is not documented);
2. colour-space conversion when ``csc_switch``: ``out_c = (r_c0 * (Y - input_bias_0) + r_c1 * (U -
   input_bias_1) + r_c2 * (V - input_bias_2)) >> 8`` (an arithmetic shift: floor), saturated to
   0..255 (``rbuv_swap_switch`` swaps U and V first); without CSC the channels are Y, U, V;
3. ``(out_c - mean_chn_c - min_chn_c) * var_reci_chn_c``, rounded to float16 (AIPP hands the model
   float16), then cast to the ONNX input's type and laid out as it wants (NCHW or NHWC).

Only what an image classifier needs is emulated: static AIPP on input 0 from YUV420SP_U8, no
crop, resize or padding; anything else in the table makes ``load_from_file`` fail (100013), as an
unknown key would make ATC fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._codes import (
    ACL_ERROR_PARSE_MODEL,
    ACL_FLOAT,
    ACL_FLOAT16,
    ACL_FORMAT_NHWC,
    ACL_UINT8,
    NP_OF_ACL,
)
from ._state import (
    Fail,
    Tensor,
)

# aclmdlInputAippType (acl_mdl.h)
ACL_DATA_WITHOUT_AIPP, ACL_DATA_WITH_STATIC_AIPP, ACL_DATA_WITH_DYNAMIC_AIPP, ACL_DYNAMIC_AIPP_NODE = 0, 1, 2, 3
ACL_INVALID_NODE_INDEX = 0xFFFFFFFF
ACL_YUV420SP_U8 = 1  # aclAippInputFormat

_FLAGS_FALSE_ONLY = ("crop", "resize", "padding", "ax_swap_switch", "single_line_mode")
_KEYS = {
    "aipp_mode",
    "related_input_rank",
    "input_format",
    "src_image_size_w",
    "src_image_size_h",
    "csc_switch",
    "rbuv_swap_switch",
    *_FLAGS_FALSE_ONLY,
    *(f"matrix_r{r}c{c}" for r in range(3) for c in range(3)),
    *(f"input_bias_{i}" for i in range(3)),
    *(f"output_bias_{i}" for i in range(3)),
    *(f"mean_chn_{i}" for i in range(4)),
    *(f"min_chn_{i}" for i in range(4)),
    *(f"var_reci_chn_{i}" for i in range(4)),
}


@dataclass(frozen=True)
class Aipp:
    name: str  # the ONNX input it feeds
    layout: str  # that input's layout: NCHW or NHWC
    dtype: np.dtype  # and its type
    width: int
    height: int
    csc: bool
    matrix: tuple[tuple[int, int, int], ...]
    input_bias: tuple[int, int, int]
    output_bias: tuple[int, int, int]
    rbuv_swap: bool
    mean: tuple[int, int, int, int]
    min: tuple[float, float, float, float]
    var_reci: tuple[float, float, float, float]

    def frame_bytes(self) -> int:
        return self.width * self.height * 3 // 2


def _bad(why: str) -> Fail:
    return Fail(ACL_ERROR_PARSE_MODEL, f"sidecar aipp: {why}")


def parse(table: Any, onnx_name: str, onnx_shape: list[Any], onnx_type: int) -> Aipp:
    """The sidecar's ``"aipp"`` table checked against the ONNX model's input 0."""
    if not isinstance(table, dict):
        raise _bad("must be a table of aipp.cfg keys")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise _bad(f"unknown or unsupported keys {unknown}")
    if table.get("aipp_mode", "static") != "static":
        raise _bad("only aipp_mode static is emulated")
    if table.get("related_input_rank", 0) != 0:
        raise _bad("only related_input_rank 0 is emulated")
    if table.get("input_format") != "YUV420SP_U8":
        raise _bad(f"input_format {table.get('input_format')!r}: only YUV420SP_U8 is emulated")
    for flag in _FLAGS_FALSE_ONLY:
        if table.get(flag, False):
            raise _bad(f"{flag}: crop/resize/padding/swaps are not emulated")

    def integer(key: str, default: int | None, lo: int, hi: int) -> int:
        value = table.get(key, default)
        if value is None:
            raise _bad(f"{key} is required")
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _bad(f"{key} must be an integer in {lo}..{hi}, got {value!r}")
        return value

    def real(key: str, default: float) -> float:
        value = table.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise _bad(f"{key} must be a number, got {value!r}")
        return float(value)

    def switch(key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise _bad(f"{key} must be true or false, got {value!r}")
        return value

    width = integer("src_image_size_w", None, 1, 4096)
    height = integer("src_image_size_h", None, 1, 4096)
    if width % 2 or height % 2:
        raise _bad(f"src_image_size {width}x{height}: YUV420SP_U8 needs even width and height")
    csc = switch("csc_switch")
    matrix = tuple(
        tuple(integer(f"matrix_r{r}c{c}", None if csc else 0, -32768, 32767) for c in range(3)) for r in range(3)
    )
    if len(onnx_shape) != 4:
        raise _bad(f"input {onnx_name} must be 4-D (N, C, H, W or N, H, W, C), is {onnx_shape}")
    if onnx_type not in (ACL_FLOAT, ACL_FLOAT16):
        raise _bad(f"input {onnx_name} must be float or float16 (AIPP feeds the model float16)")
    if list(onnx_shape[1:]) == [3, height, width]:
        layout = "NCHW"
    elif list(onnx_shape[1:]) == [height, width, 3]:
        layout = "NHWC"
    else:
        raise _bad(f"input {onnx_name} {onnx_shape} does not take 3 x {height} x {width} (no crop is emulated)")
    return Aipp(
        name=onnx_name,
        layout=layout,
        dtype=NP_OF_ACL[onnx_type],
        width=width,
        height=height,
        csc=csc,
        matrix=matrix,
        input_bias=tuple(integer(f"input_bias_{i}", 0, 0, 255) for i in range(3)),
        output_bias=tuple(integer(f"output_bias_{i}", 0, 0, 255) for i in range(3)),
        rbuv_swap=switch("rbuv_swap_switch"),
        mean=tuple(integer(f"mean_chn_{i}", 0, 0, 255) for i in range(4)),
        min=tuple(real(f"min_chn_{i}", 0.0) for i in range(4)),
        var_reci=tuple(real(f"var_reci_chn_{i}", 1.0) for i in range(4)),
    )


def input_tensor(aipp: Aipp, batch: int, dynamic: bool) -> Tensor:
    """How ``acl.mdl`` describes the AIPP input: uint8 NHWC ``[n, h, w, 3]`` (get_input_dims), the
    size of ``n`` YUV420SP frames (get_input_size_by_index)."""
    dims = [-1 if dynamic else batch, aipp.height, aipp.width, 3]
    return Tensor(aipp.name, dims, ACL_UINT8, ACL_FORMAT_NHWC, batch * aipp.frame_bytes())


def dims_v2(aipp: Aipp, dims: list[int]) -> list[int]:
    """get_input_dims_v2 for the AIPP input: ``[n, h * 1.5, w, 1]`` (its product is the byte size)."""
    return [dims[0], aipp.height * 3 // 2, aipp.width, 1]


def to_model_input(aipp: Aipp, raw: bytes, batch: int) -> np.ndarray:
    """``batch`` YUV420SP frames -> the ONNX input (see the module docstring)."""
    h, w = aipp.height, aipp.width
    frames = np.frombuffer(raw, dtype=np.uint8, count=batch * aipp.frame_bytes()).reshape(batch, -1)
    y = frames[:, : h * w].reshape(batch, h, w).astype(np.int32)
    uv = frames[:, h * w :].reshape(batch, h // 2, w // 2, 2).repeat(2, axis=1).repeat(2, axis=2).astype(np.int32)
    u, v = (uv[..., 1], uv[..., 0]) if aipp.rbuv_swap else (uv[..., 0], uv[..., 1])
    if aipp.csc:
        b0, b1, b2 = aipp.input_bias
        yuv = np.stack([y - b0, u - b1, v - b2], axis=-1)
        pixels = np.clip(np.right_shift(yuv @ np.array(aipp.matrix, dtype=np.int32).T, 8), 0, 255)
    else:
        pixels = np.stack([y, u, v], axis=-1)
    mean = np.array(aipp.mean[:3], dtype=np.float32)
    low = np.array(aipp.min[:3], dtype=np.float32)
    scale = np.array(aipp.var_reci[:3], dtype=np.float32)
    x = ((pixels.astype(np.float32) - mean - low) * scale).astype(np.float16).astype(aipp.dtype)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if aipp.layout == "NCHW" else x)


def info(aipp: Aipp, tensor: Tensor, batch: int) -> dict[str, Any]:
    """``acl.mdl.get_first_aipp_info``'s dict, with the keys pyACL's wrapper fills (that wrapper
    returns only six of the nine matrix entries: R0C0, R0C1, R1C0, R1C1, R1C2, R2C2)."""
    m = aipp.matrix
    out_dims = [batch, 3, aipp.height, aipp.width] if aipp.layout == "NCHW" else [batch, aipp.height, aipp.width, 3]
    d: dict[str, Any] = {
        "cscSwitch": int(aipp.csc),
        "matrixR0C0": m[0][0],
        "matrixR0C1": m[0][1],
        "matrixR1C0": m[1][0],
        "matrixR1C1": m[1][1],
        "matrixR1C2": m[1][2],
        "matrixR2C2": m[2][2],
        **{f"outputBias{i}": aipp.output_bias[i] for i in range(3)},
        **{f"inputBias{i}": aipp.input_bias[i] for i in range(3)},
        "rbuvSwapSwitch": int(aipp.rbuv_swap),
        "axSwapSwitch": 0,
        "singleLineMode": 0,
        "srcImageSizeW": aipp.width,
        "srcImageSizeH": aipp.height,
        "srcFormat": ACL_FORMAT_NHWC,
        "srcDatatype": ACL_UINT8,
        "srcDimNum": 4,
        "shapeCount": 1,
        "inputFormat": ACL_YUV420SP_U8,
        "aippExtend": 0,
        "cropSwitch": 0,
        "loadStartPosW": 0,
        "loadStartPosH": 0,
        "cropSizeW": 0,
        "cropSizeH": 0,
        "resizeSwitch": 0,
        "resizeOutputW": 0,
        "resizeOutputH": 0,
        "paddingSwitch": 0,
        "leftPaddingSize": 0,
        "rightPaddingSize": 0,
        "topPaddingSize": 0,
        "bottomPaddingSize": 0,
        **{f"meanChn{i}": aipp.mean[i] for i in range(4)},
        **{f"minChn{i}": aipp.min[i] for i in range(4)},
        **{f"varReciChn{i}": aipp.var_reci[i] for i in range(4)},
        "outDims": [
            {
                "srcDims": {"name": tensor.name, "dimCount": 4, "dims": [batch, aipp.height, aipp.width, 3]},
                "srcSize": batch * aipp.frame_bytes(),
                "aippOutdims": {"name": tensor.name, "dimCount": 4, "dims": out_dims},
                "aippOutSize": batch * 3 * aipp.height * aipp.width * 2,
            }
        ],
    }
    return d
