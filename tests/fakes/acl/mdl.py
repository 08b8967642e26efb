"""``acl.mdl``: models, descriptions, datasets, execution. An ``.om`` here is an ONNX file run by
onnxruntime (``acl._model_file``). A fixed ONNX batch dim makes a static-batch model; a symbolic one
needs a sidecar ``<model>.om.json`` such as ``{"dynamic_batch": [1, 2, 4, 8]}`` (the ATC
``--dynamic_batch_size`` gears), and then the model gets the extra ``ascend_mbatch_shape_data`` input
ATC appends. Optional sidecar keys: ``"input_format": "NCHW" | "NHWC" | "ND"``, and ``"aipp"``: a
static AIPP table with ATC ``aipp.cfg`` keys (``acl._aipp``) that makes input 0 uint8 YUV420SP
(NV12) of the model's size, converted (CSC, normalisation) before the ONNX graph runs; AIPP is
emulated with numpy, not hardware figures. ``get_aipp_type``/``get_first_aipp_info``/
``get_input_dims_v2`` describe it.
"""

from __future__ import annotations

from typing import Any

from . import _aipp
from ._codes import (
    ACL_ERROR_GE_AIPP_NOT_EXIST,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_MODEL_CONTEXT,
    ACL_SUCCESS,
)
from ._mdl_run import (
    _model,
    add_dataset_buffer,
    create_dataset,
    destroy_dataset,
    execute,
    execute_async,
    get_dataset_buffer,
    get_dataset_num_buffers,
    set_dynamic_batch_size,
)
from ._model_file import load as _load
from ._state import (
    HANDLE_BASE,
    STATE,
    Desc,
    Fail,
    Model,
    Tensor,
    api,
)

__all__ = [
    "add_dataset_buffer",
    "create_dataset",
    "create_desc",
    "destroy_dataset",
    "destroy_desc",
    "execute",
    "execute_async",
    "get_aipp_type",
    "get_dataset_buffer",
    "get_dataset_num_buffers",
    "get_desc",
    "get_dynamic_batch",
    "get_first_aipp_info",
    "get_input_data_type",
    "get_input_dims",
    "get_input_dims_v2",
    "get_input_format",
    "get_input_index_by_name",
    "get_input_name_by_index",
    "get_input_size_by_index",
    "get_num_inputs",
    "get_num_outputs",
    "get_output_data_type",
    "get_output_dims",
    "get_output_format",
    "get_output_name_by_index",
    "get_output_size_by_index",
    "load_from_file",
    "set_dynamic_batch_size",
    "unload",
]


@api("mdl.load_from_file", "pair", empty=0)
def load_from_file(model_path: str) -> tuple[int, int]:
    ctx = STATE.require_context()
    model = _load(str(model_path), ctx.device)
    STATE.models[model.model_id] = model
    return model.model_id, ACL_SUCCESS


@api("mdl.unload")
def unload(model_id: int) -> int:
    ctx = STATE.require_context()
    model = _model(model_id)
    if model.device != ctx.device:
        raise Fail(ACL_ERROR_RT_MODEL_CONTEXT, f"model is on device {model.device}, current context on {ctx.device}")
    del STATE.models[model_id]
    return ACL_SUCCESS


# --- description -----------------------------------------------------------------------------
@api("mdl.create_desc", "handle")
def create_desc() -> int:
    STATE.require_init()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.descs[handle] = Desc(handle)
    return handle


@api("mdl.get_desc")
def get_desc(model_desc: int, model_id: int) -> int:
    STATE.require_init()
    desc = STATE.descs.get(model_desc)
    if desc is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"model_desc {model_desc!r} was not made by create_desc")
    desc.model = _model(model_id)
    return ACL_SUCCESS


@api("mdl.destroy_desc")
def destroy_desc(model_desc: int) -> int:
    STATE.require_init()
    if model_desc not in STATE.descs:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"model_desc {model_desc!r} is not live")
    del STATE.descs[model_desc]
    return ACL_SUCCESS


def _described(model_desc: int) -> Model:
    desc = STATE.descs.get(model_desc)
    if desc is None or desc.model is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"model_desc {model_desc!r} is not live or not filled by get_desc")
    return desc.model


def _tensor_at(tensors: list[Tensor], index: int) -> Tensor:
    if not isinstance(index, int) or not 0 <= index < len(tensors):
        raise Fail(ACL_ERROR_INVALID_PARAM, f"index {index!r} out of range 0..{len(tensors) - 1}")
    return tensors[index]


def _dims(t: Tensor) -> dict[str, Any]:
    return {"name": t.name, "dimCount": len(t.dims), "dims": list(t.dims)}


def _no_dims() -> dict[str, Any]:
    return {"name": "", "dimCount": 0, "dims": []}


@api("mdl.get_num_inputs", "value", empty=0)
def get_num_inputs(model_desc: int) -> int:
    return len(_described(model_desc).inputs)


@api("mdl.get_num_outputs", "value", empty=0)
def get_num_outputs(model_desc: int) -> int:
    return len(_described(model_desc).outputs)


@api("mdl.get_input_size_by_index", "value", empty=0)
def get_input_size_by_index(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).inputs, index).size


@api("mdl.get_output_size_by_index", "value", empty=0)
def get_output_size_by_index(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).outputs, index).size


@api("mdl.get_input_dims", "pair", empty=_no_dims)
def get_input_dims(model_desc: int, index: int) -> tuple[dict[str, Any], int]:
    return _dims(_tensor_at(_described(model_desc).inputs, index)), ACL_SUCCESS


@api("mdl.get_input_dims_v2", "pair", empty=_no_dims)
def get_input_dims_v2(model_desc: int, index: int) -> tuple[dict[str, Any], int]:
    """As get_input_dims, except an AIPP input: ``[n, h * 1.5, w, 1]`` for YUV420SP (the product of
    the dims is then get_input_size_by_index)."""
    model = _described(model_desc)
    d = _dims(_tensor_at(model.inputs, index))
    if index == 0 and model.aipp is not None:
        d["dims"] = _aipp.dims_v2(model.aipp, d["dims"])
    return d, ACL_SUCCESS


@api("mdl.get_output_dims", "pair", empty=_no_dims)
def get_output_dims(model_desc: int, index: int) -> tuple[dict[str, Any], int]:
    return _dims(_tensor_at(_described(model_desc).outputs, index)), ACL_SUCCESS


@api("mdl.get_input_data_type", "value", empty=-1)
def get_input_data_type(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).inputs, index).dtype


@api("mdl.get_output_data_type", "value", empty=-1)
def get_output_data_type(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).outputs, index).dtype


@api("mdl.get_input_format", "value", empty=-1)
def get_input_format(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).inputs, index).fmt


@api("mdl.get_output_format", "value", empty=-1)
def get_output_format(model_desc: int, index: int) -> int:
    return _tensor_at(_described(model_desc).outputs, index).fmt


@api("mdl.get_input_name_by_index", "value", empty="")
def get_input_name_by_index(model_desc: int, index: int) -> str:
    return _tensor_at(_described(model_desc).inputs, index).name


@api("mdl.get_output_name_by_index", "value", empty="")
def get_output_name_by_index(model_desc: int, index: int) -> str:
    return _tensor_at(_described(model_desc).outputs, index).name


@api("mdl.get_input_index_by_name", "pair", empty=0)
def get_input_index_by_name(model_desc: int, name: str) -> tuple[int, int]:
    for i, t in enumerate(_described(model_desc).inputs):
        if t.name == name:
            return i, ACL_SUCCESS
    raise Fail(ACL_ERROR_INVALID_PARAM, f"no input named {name!r}", misuse=False)


@api("mdl.get_dynamic_batch", "pair", empty=lambda: {"batchCount": 0, "batch": []})
def get_dynamic_batch(model_desc: int) -> tuple[dict[str, Any], int]:
    gears = _described(model_desc).gears
    return {"batchCount": len(gears), "batch": list(gears)}, ACL_SUCCESS


@api("mdl.get_aipp_type", "tuple", empty=(_aipp.ACL_DATA_WITHOUT_AIPP, 0))
def get_aipp_type(model_id: int, index: int) -> tuple[int, int, int]:
    """``(aipp_type, dynamic_attached_data_index, ret)``: ACL_DATA_WITH_STATIC_AIPP (1) for an AIPP
    input, else ACL_DATA_WITHOUT_AIPP (0); the index is ACL_INVALID_NODE_INDEX (no dynamic AIPP)."""
    model = _model(model_id)
    _tensor_at(model.inputs, index)
    kind = _aipp.ACL_DATA_WITH_STATIC_AIPP if index == 0 and model.aipp else _aipp.ACL_DATA_WITHOUT_AIPP
    return kind, _aipp.ACL_INVALID_NODE_INDEX, ACL_SUCCESS


@api("mdl.get_first_aipp_info", "pair", empty=None)
def get_first_aipp_info(model_id: int, index: int) -> tuple[dict[str, Any] | None, int]:
    """``(aipp_info, ret)``: the static AIPP configuration of input ``index``; ``(None, 145015)``
    (ACL_ERROR_GE_AIPP_NOT_EXIST) for an input without one."""
    model = _model(model_id)
    tensor = _tensor_at(model.inputs, index)
    if index != 0 or model.aipp is None:
        raise Fail(ACL_ERROR_GE_AIPP_NOT_EXIST, f"input {index} has no static AIPP", misuse=False)
    batch = model.gears[-1] if model.gears else model.batch
    return _aipp.info(model.aipp, tensor, batch), ACL_SUCCESS
