"""Reading an emulated ``.om``: an ONNX file run by onnxruntime plus an optional sidecar
``<model>.om.json``. Sidecar keys: ``"dynamic_batch": [1, 2, 4, 8]`` (the ATC
``--dynamic_batch_size`` gears, for a symbolic ONNX batch dim; the model then gets the extra
``ascend_mbatch_shape_data`` input ATC appends), ``"input_format": "NCHW" | "NHWC" | "ND"``, and
``"aipp": {...}`` (static AIPP on input 0, see ``acl._aipp``). Without ``"aipp"`` a model is
exactly its ONNX graph.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from . import _aipp
from ._codes import (
    ACL_ERROR_PARSE_MODEL,
    ACL_ERROR_READ_MODEL_FAILURE,
    ACL_FLOAT,
    ACL_FLOAT16,
    ACL_FORMAT_NCHW,
    ACL_FORMAT_ND,
    ACL_FORMAT_NHWC,
    ACL_INT8,
    ACL_INT32,
    ACL_INT64,
    ACL_UINT8,
    NP_OF_ACL,
)
from ._state import (
    STATE,
    Fail,
    Model,
    Tensor,
)

DYNAMIC_BATCH_INPUT = "ascend_mbatch_shape_data"
_ORT_TYPES = {
    "tensor(float)": ACL_FLOAT,
    "tensor(float16)": ACL_FLOAT16,
    "tensor(int8)": ACL_INT8,
    "tensor(uint8)": ACL_UINT8,
    "tensor(int32)": ACL_INT32,
    "tensor(int64)": ACL_INT64,
}
_FORMATS = {"NCHW": ACL_FORMAT_NCHW, "NHWC": ACL_FORMAT_NHWC, "ND": ACL_FORMAT_ND}


def _guess_format(dims: list[int]) -> int:
    if len(dims) == 4 and dims[1] in (1, 3):
        return ACL_FORMAT_NCHW
    if len(dims) == 4 and dims[3] in (1, 3):
        return ACL_FORMAT_NHWC
    return ACL_FORMAT_ND


def _tensor(name: str, shape: list[Any], ort_type: str, batch: int, dynamic: bool, fmt: int | None) -> Tensor:
    if ort_type not in _ORT_TYPES:
        raise Fail(ACL_ERROR_PARSE_MODEL, f"tensor {name}: unsupported type {ort_type}")
    rest = shape[1:]
    if not shape or not all(isinstance(d, int) and d > 0 for d in rest):
        raise Fail(ACL_ERROR_PARSE_MODEL, f"tensor {name}: only the batch dim may be symbolic, got {shape}")
    dtype = _ORT_TYPES[ort_type]
    dims = [-1 if dynamic else batch, *rest]
    size = batch * math.prod(rest) * NP_OF_ACL[dtype].itemsize
    return Tensor(name, dims, dtype, fmt if fmt is not None else _guess_format([batch, *rest]), size)


def load(path: str, device: int) -> Model:
    if not os.path.isfile(path):
        raise Fail(ACL_ERROR_READ_MODEL_FAILURE, f"cannot read model file {path}")
    sidecar: dict[str, Any] = {}
    if os.path.isfile(path + ".json"):
        with open(path + ".json", encoding="utf-8") as f:
            sidecar = json.load(f)
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("ACL_FAKE_THREADS", "1"))
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise Fail(ACL_ERROR_PARSE_MODEL, f"not a loadable model: {exc}") from None
    ort_in = session.get_inputs()
    first = ort_in[0].shape[0]
    gears = sorted(int(g) for g in sidecar.get("dynamic_batch", []))
    if gears and (isinstance(first, int) and first > 0):
        raise Fail(ACL_ERROR_PARSE_MODEL, "dynamic_batch gears given for a model with a fixed batch dim")
    if not gears and not (isinstance(first, int) and first > 0):
        raise Fail(ACL_ERROR_PARSE_MODEL, f"batch dim is {first!r}: give gears in {os.path.basename(path)}.json")
    dynamic = bool(gears)
    batch = gears[-1] if dynamic else int(first)
    fmt = _FORMATS.get(sidecar.get("input_format", ""))
    inputs = [_tensor(i.name, list(i.shape), i.type, batch, dynamic, fmt) for i in ort_in]
    outputs = [
        _tensor(o.name, [batch, *list(o.shape)[1:]], o.type, batch, False, ACL_FORMAT_ND) for o in session.get_outputs()
    ]
    aipp = None
    if "aipp" in sidecar:
        first_in = ort_in[0]
        aipp = _aipp.parse(sidecar["aipp"], first_in.name, list(first_in.shape), inputs[0].dtype)
        inputs[0] = _aipp.input_tensor(aipp, batch, dynamic)
    dyn_index = -1
    if dynamic:
        dyn_index = len(inputs)
        inputs.append(Tensor(DYNAMIC_BATCH_INPUT, [1], ACL_INT64, ACL_FORMAT_ND, 8))
    return Model(
        next(STATE.model_ids),
        device,
        path,
        session,
        inputs,
        outputs,
        0 if dynamic else batch,
        gears,
        dyn_index,
        aipp,
    )
