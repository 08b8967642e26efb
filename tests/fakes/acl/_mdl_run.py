"""``acl.mdl``'s datasets and execution (re-exported by ``acl.mdl``; see its docstring), and the model
lookup both halves use."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import _aipp
from ._codes import (
    ACL_ERROR_INVALID_MODEL_ID,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_MODEL_INPUT_NOT_MATCH,
    ACL_ERROR_MODEL_NOT_DYNAMIC,
    ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
    ACL_ERROR_RT_MODEL_CONTEXT,
    ACL_ERROR_RT_MODEL_EXECUTE,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
    NP_OF_ACL,
)
from ._model_file import DYNAMIC_BATCH_INPUT
from ._state import (
    HANDLE_BASE,
    STATE,
    DataBuffer,
    Dataset,
    DevMem,
    Fail,
    Model,
    api,
)


def _model(model_id: int) -> Model:
    model = STATE.models.get(model_id)
    if model is None:
        raise Fail(ACL_ERROR_INVALID_MODEL_ID, f"model id {model_id!r} is not loaded")
    return model


# --- datasets ------------------------------------------------------------------------------
@api("mdl.create_dataset", "handle")
def create_dataset() -> int:
    STATE.require_init()
    handle = STATE.new_handle(HANDLE_BASE)
    STATE.datasets[handle] = Dataset(handle)
    return handle


def _dataset(dataset: int) -> Dataset:
    ds = STATE.datasets.get(dataset)
    if ds is None:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"dataset {dataset!r} is not live")
    return ds


@api("mdl.add_dataset_buffer", "pair", empty=0)
def add_dataset_buffer(dataset: int, data_buffer: int) -> tuple[int, int]:
    STATE.require_init()
    ds = _dataset(dataset)
    if data_buffer not in STATE.buffers:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"data buffer {data_buffer!r} is not live")
    ds.buffers.append(data_buffer)
    return dataset, ACL_SUCCESS


@api("mdl.get_dataset_num_buffers", "value", empty=0)
def get_dataset_num_buffers(dataset: int) -> int:
    return len(_dataset(dataset).buffers)


@api("mdl.get_dataset_buffer", "value", empty=0)
def get_dataset_buffer(dataset: int, index: int) -> int:
    ds = _dataset(dataset)
    if not 0 <= index < len(ds.buffers):
        raise Fail(ACL_ERROR_INVALID_PARAM, f"index {index!r} out of range")
    return ds.buffers[index]


@api("mdl.destroy_dataset")
def destroy_dataset(dataset: int) -> int:
    STATE.require_init()
    _dataset(dataset)
    del STATE.datasets[dataset]
    return ACL_SUCCESS


# --- execution -----------------------------------------------------------------------------
def _buffer_memory(handle: int, need: int, device: int, what: str, code: int) -> tuple[DevMem, int, DataBuffer]:
    buf = STATE.buffers.get(handle)
    if buf is None:
        raise Fail(code, f"{what}: data buffer {handle!r} is not live")
    if buf.size < need:
        raise Fail(code, f"{what}: data buffer holds {buf.size} bytes, the model needs {need}")
    found = STATE.device_region(buf.ptr, need)
    if found is None:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{what}: data buffer points at freed or foreign memory")
    mem, offset = found
    if mem.device != device:
        raise Fail(ACL_ERROR_RT_PARAM_INVALID, f"{what}: memory is on device {mem.device}, model on {device}")
    return mem, offset, buf


def _prepare(model_id: int, dataset_in: int, dataset_out: int) -> Callable[[], None]:
    """Validate an execute call now (as ACL does) and return the work that runs the model."""
    ctx = STATE.require_context()
    model = _model(model_id)
    if model.device != ctx.device:
        raise Fail(ACL_ERROR_RT_MODEL_CONTEXT, f"model is on device {model.device}, current context on {ctx.device}")
    ins, outs = _dataset(dataset_in), _dataset(dataset_out)
    if len(ins.buffers) != len(model.inputs):
        raise Fail(
            ACL_ERROR_MODEL_INPUT_NOT_MATCH,
            f"{len(ins.buffers)} input buffers, model has {len(model.inputs)}",
        )
    if len(outs.buffers) != len(model.outputs):
        raise Fail(
            ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
            f"{len(outs.buffers)} output buffers, model has {len(model.outputs)}",
        )
    in_mem = [
        _buffer_memory(h, t.size, model.device, f"input {i}", ACL_ERROR_MODEL_INPUT_NOT_MATCH)
        for i, (h, t) in enumerate(zip(ins.buffers, model.inputs, strict=True))
    ]
    out_mem = [
        _buffer_memory(h, t.size, model.device, f"output {i}", ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)
        for i, (h, t) in enumerate(zip(outs.buffers, model.outputs, strict=True))
    ]

    def run() -> None:
        if model.gears:
            mem, off, _ = in_mem[model.dyn_index]
            batch = int(np.frombuffer(bytes(mem.data[off : off + 8]), dtype=np.int64)[0])
            if batch not in model.gears:
                raise Fail(
                    ACL_ERROR_INVALID_PARAM,
                    f"dynamic batch not set (read {batch}): call set_dynamic_batch_size",
                )
        else:
            batch = model.batch
        feeds = {}
        for i, t in enumerate(model.inputs):
            if i == model.dyn_index:
                continue
            dtype = NP_OF_ACL[t.dtype]
            shape = [batch, *t.dims[1:]]
            nbytes = math.prod(shape) * dtype.itemsize
            mem, off, _ = in_mem[i]
            if i == 0 and model.aipp is not None:
                raw = bytes(mem.data[off : off + batch * model.aipp.frame_bytes()])
                feeds[model.aipp.name] = _aipp.to_model_input(model.aipp, raw, batch)
                continue
            feeds[t.name] = np.frombuffer(bytes(mem.data[off : off + nbytes]), dtype=dtype).reshape(shape)
        STATE.executions.append((model.device, batch))
        try:
            results = model.session.run([t.name for t in model.outputs], feeds)
        except Exception as exc:
            raise Fail(ACL_ERROR_RT_MODEL_EXECUTE, f"model run failed: {exc}") from None
        for (mem, off, _), t, value in zip(out_mem, model.outputs, results, strict=True):
            data = np.ascontiguousarray(value, dtype=NP_OF_ACL[t.dtype]).tobytes()
            mem.data[off : off + len(data)] = data

    return run


@api("mdl.execute")
def execute(model_id: int, dataset_in: int, dataset_out: int) -> int:
    _prepare(model_id, dataset_in, dataset_out)()
    return ACL_SUCCESS


@api("mdl.execute_async")
def execute_async(model_id: int, dataset_in: int, dataset_out: int, stream: int) -> int:
    s = STATE.current_stream(stream)
    s.pending.append(_prepare(model_id, dataset_in, dataset_out))  # runs at synchronize_stream
    return ACL_SUCCESS


@api("mdl.set_dynamic_batch_size")
def set_dynamic_batch_size(model_id: int, dataset: int, index: int, batch_size: int) -> int:
    ctx = STATE.require_context()
    model = _model(model_id)
    if not model.gears:
        raise Fail(ACL_ERROR_MODEL_NOT_DYNAMIC, "the model has no dynamic batch gears")
    if index != model.dyn_index:
        raise Fail(
            ACL_ERROR_INVALID_PARAM,
            f"index {index} is not the {DYNAMIC_BATCH_INPUT} input ({model.dyn_index})",
        )
    ds = _dataset(dataset)
    if len(ds.buffers) <= index:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"dataset has no buffer at index {index} for {DYNAMIC_BATCH_INPUT}")
    if batch_size not in model.gears:
        raise Fail(ACL_ERROR_INVALID_PARAM, f"batch {batch_size} is not one of the gears {model.gears}")
    mem, off, _ = _buffer_memory(ds.buffers[index], 8, ctx.device, DYNAMIC_BATCH_INPUT, ACL_ERROR_INVALID_PARAM)
    mem.data[off : off + 8] = np.int64(batch_size).tobytes()
    return ACL_SUCCESS
