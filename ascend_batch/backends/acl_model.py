"""What an ``.om`` model takes and gives, read from its pyACL model description and checked against
the manifest (:func:`read_model_io`, :func:`check_input`).

Inputs: one data input (plus ``ascend_mbatch_shape_data`` for models converted with ATC
``--dynamic_batch_size``, whose gears decide the session's batch); outputs: output 0 holds float32 or
float16 logits, their count taken from the description, never a hard-coded 1000. A mismatch with the
manifest is a :class:`~ascend_batch.errors.StartupError` naming the manifest key to change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from ..preprocess import Preprocess
from .acl_runtime import (
    ACL_DATA_WITH_STATIC_AIPP,
    ACL_DATA_WITHOUT_AIPP,
    ACL_DTYPES,
    ACL_FORMAT_NCHW,
    ACL_FORMAT_NHWC,
    ACL_SUCCESS,
    ACL_YUV420SP_U8,
    DYNAMIC_BATCH_INPUT,
    value_of,
)
from .base import Device


def _dtype_name(dtype: np.dtype) -> str:
    return str(np.dtype(dtype))


def check_input(
    model: ModelSpec, dims: list[int], size: int, dtype: np.dtype | None, fmt: int | None, batch: int
) -> None:
    """Refuse a manifest whose preprocessing does not produce what the model takes.

    ``dims`` from ``acl.mdl.get_input_dims`` (batch dim -1 for dynamic batch), ``size`` the byte
    size at ``batch`` (``get_input_size_by_index``), ``dtype``/``fmt`` from
    ``get_input_data_type``/``get_input_format`` when this CANN has them (else ``None``).
    """
    pp: Preprocess = model.preprocess
    where = f"model {model.path}"
    if len(dims) != 4:
        raise StartupError(
            f"{where}: input dims {dims} are not an image batch (N,C,H,W or N,H,W,C); "
            "the acl backend runs single-input image classifiers"
        )
    if fmt == ACL_FORMAT_NCHW:
        layout = "NCHW"
    elif fmt == ACL_FORMAT_NHWC:
        layout = "NHWC"
    elif dims[1] == 3 and dims[3] != 3:
        layout = "NCHW"
    elif dims[3] == 3 and dims[1] != 3:
        layout = "NHWC"
    else:
        layout = pp.layout
    chw = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    channels, height, width = chw
    if layout != pp.layout:
        raise StartupError(
            f"[model.layout] {where} takes {layout} input {dims}, but the manifest has model.layout = "
            f"'{pp.layout}': set model.layout = '{layout}'"
        )
    if channels != 3:
        raise StartupError(f"{where} takes {channels}-channel input {dims} ({layout}); images are fed as RGB (3)")
    if (height, width) != (pp.size, pp.size):
        raise StartupError(
            f"[model.input_size] {where} takes {height}x{width} input {dims} ({layout}), "
            f"but model.input_size = {pp.size}"
            + (f": set model.input_size = {height}" if height == width else " (only square inputs)")
        )
    want = pp.numpy_dtype
    if dtype is not None and dtype != want:
        raise StartupError(
            f"[model.dtype] {where} takes {_dtype_name(dtype)} input, but model.dtype = '{pp.dtype}': "
            f"set model.dtype = '{_dtype_name(dtype)}'"
        )
    elements = batch * 3 * pp.size * pp.size
    if size != elements * want.itemsize:
        per = size / elements if elements else 0
        guess = {1.0: "uint8", 2.0: "float16", 4.0: "float32"}.get(per)
        if guess is not None and guess != pp.dtype:
            raise StartupError(
                f"[model.dtype] {where}: its input is {size} bytes for "
                f"{batch}x3x{pp.size}x{pp.size} values, i.e. {guess}, but model.dtype = '{pp.dtype}': "
                f"set model.dtype = '{guess}'"
            )
        raise StartupError(
            f"{where}: its input is {size} bytes, but the manifest's preprocessing gives "
            f"{elements * want.itemsize} ({batch}x{pp.input_shape(1)[1:]} {pp.dtype}): check "
            "model.input_size, model.layout and model.dtype (a model built with AIPP, --insert_op_conf, "
            "takes YUV/uint8 input and is not supported)"
        )


@dataclass(frozen=True)
class ModelIO:
    """A loaded model's inputs and outputs as a session uses them."""

    in_sizes: tuple[int, ...]  # bytes of every input at the model's largest batch
    out_sizes: tuple[int, ...]  # bytes of every output
    in_index: int  # the data input
    dyn_index: int | None  # the ascend_mbatch_shape_data input (dynamic batch), else None
    gears: tuple[int, ...]  # batch gears, ascending; empty for a static batch
    max_batch: int  # the session's batch: the compiled batch, or the smallest gear >= runtime.batch_size
    input_shape: tuple[int, ...]  # model.preprocess.input_shape(max_batch)
    in_dtype: np.dtype
    in_row: int  # input bytes per sample
    num_classes: int
    out_dtype: np.dtype  # of the logits (float32 or float16)
    out_row: int  # logits bytes per sample
    aipp: bool = False  # input 0 is uint8 YUV420SP (NV12) of the model's size; AIPP converts and normalises


def has_yuv420sp_aipp(acl: Any, model_id: int, index: int, model: ModelSpec, device: Device) -> bool:
    """Whether the model's input ``index`` goes through static AIPP taking YUV420SP (NV12) uint8: asked
    of the model (``get_aipp_type``, ``get_first_aipp_info``), or stated by the manifest's ``model.aipp``
    where this pyACL cannot answer (or to override it)."""
    if model.aipp is not None:
        return model.aipp == "yuv420sp"
    if not hasattr(acl.mdl, "get_aipp_type"):
        return False
    aipp_type, _attached, ret = acl.mdl.get_aipp_type(model_id, index)
    if ret != ACL_SUCCESS or aipp_type == ACL_DATA_WITHOUT_AIPP:
        return False
    if aipp_type != ACL_DATA_WITH_STATIC_AIPP:
        raise StartupError(
            f"model {model.path} has dynamic AIPP (aipp type {aipp_type}); convert it with a static aipp.cfg "
            "(see the README, Ascend)"
        )
    info = value_of(device, "acl.mdl.get_first_aipp_info", acl.mdl.get_first_aipp_info(model_id, index))
    fmt = int(info.get("inputFormat", -1))
    if fmt != ACL_YUV420SP_U8:
        raise StartupError(
            f"model {model.path}: its AIPP takes input format {fmt}; ascend-batch feeds AIPP models YUV420SP_U8 "
            "(input_format in aipp.cfg)"
        )
    return True


def check_aipp_input(model: ModelSpec, size: int, batch: int) -> None:
    """An AIPP model's input 0 must be ``batch`` NV12 images of ``model.input_size`` squared."""
    side = model.preprocess.size
    want = batch * side * side * 3 // 2
    if side % 16 or side < 32:
        raise StartupError(
            f"[model.input_size] {side}: DVPP writes rows whose width is a multiple of 16, at least 32; an AIPP "
            "model's input must be too"
        )
    if size != want:
        raise StartupError(
            f"[model.input_size] model {model.path} takes {size} bytes per batch of {batch}, not {batch} "
            f"YUV420SP images of {side}x{side} ({want} bytes): set model.input_size to the model's AIPP src size"
        )


def _dims(device: Device, call: str, result: tuple[dict[str, Any], int]) -> list[int]:
    return [int(d) for d in value_of(device, call, result)["dims"]]


def read_model_io(
    acl: Any, desc: int, model: ModelSpec, batch_size: int, device: Device, model_id: int | None = None
) -> ModelIO:
    """Inputs, outputs and batch gears from the model description ``desc``; check them against the
    manifest. Raises :class:`StartupError` (manifest mismatch) or :class:`BackendError` (a call failed)."""
    n_in = acl.mdl.get_num_inputs(desc)
    n_out = acl.mdl.get_num_outputs(desc)
    if n_in < 1 or n_out < 1:
        raise BackendError(f"device {device}: model {model.path} reports {n_in} inputs, {n_out} outputs")
    in_sizes = tuple(int(acl.mdl.get_input_size_by_index(desc, i)) for i in range(n_in))
    out_sizes = tuple(int(acl.mdl.get_output_size_by_index(desc, i)) for i in range(n_out))

    dyn, ret = acl.mdl.get_input_index_by_name(desc, DYNAMIC_BATCH_INPUT)
    dyn_index = int(dyn) if ret == ACL_SUCCESS else None
    gears: list[int] = []
    if dyn_index is not None:
        info = value_of(device, "acl.mdl.get_dynamic_batch", acl.mdl.get_dynamic_batch(desc))
        count = int(info.get("batchCount", 0))
        gears = sorted(int(b) for b in info.get("batch", [])[:count])
        if not gears:
            raise StartupError(
                f"model {model.path} has dynamic dims other than batch gears (dynamic image size "
                "or dims); convert it with a static --input_shape or with --dynamic_batch_size"
            )
    data_inputs = [i for i in range(n_in) if i != dyn_index]
    if len(data_inputs) != 1:
        raise StartupError(
            f"model {model.path} has {len(data_inputs)} data inputs; the acl backend runs single-input classifiers"
        )
    in_index = data_inputs[0]
    dims = _dims(device, "acl.mdl.get_input_dims", acl.mdl.get_input_dims(desc, in_index))
    if gears:
        model_batch = gears[-1]
        fits = [g for g in gears if g >= batch_size]
        max_batch = fits[0] if fits else model_batch
    else:
        if dims and dims[0] <= 0:
            raise StartupError(f"model {model.path} has a dynamic batch dim {dims} but no batch gears")
        model_batch = dims[0] if dims else 1
        max_batch = model_batch
    aipp = model_id is not None and has_yuv420sp_aipp(acl, model_id, in_index, model, device)
    in_dtype = in_fmt = None
    if aipp:
        check_aipp_input(model, in_sizes[in_index], model_batch)
    elif hasattr(acl.mdl, "get_input_data_type"):
        code = int(acl.mdl.get_input_data_type(desc, in_index))
        in_dtype = ACL_DTYPES.get(code)
        if in_dtype is None and code >= 0:
            raise StartupError(f"model {model.path} takes input of aclDataType {code}, not an image type")
    if not aipp and hasattr(acl.mdl, "get_input_format"):
        in_fmt = int(acl.mdl.get_input_format(desc, in_index))
    if not aipp:
        check_input(model, dims, in_sizes[in_index], in_dtype, in_fmt, model_batch)
    pp = aipp_preprocess(model.preprocess) if aipp else model.preprocess
    input_shape: tuple[int, ...] = pp.input_shape(max_batch)
    np_in = pp.numpy_dtype
    side = pp.size
    in_row = side * side * 3 // 2 if aipp else int(math.prod(input_shape[1:])) * np_in.itemsize

    # logits: output 0, dims from the description, never a hard-coded 1000
    out_dims = _dims(device, "acl.mdl.get_output_dims", acl.mdl.get_output_dims(desc, 0))
    row_bytes, rem = divmod(out_sizes[0], model_batch)
    from_dims = math.prod(out_dims[1:]) if len(out_dims) > 1 and all(d > 0 for d in out_dims[1:]) else None
    out_dtype: np.dtype | None = None
    if hasattr(acl.mdl, "get_output_data_type"):
        out_dtype = ACL_DTYPES.get(int(acl.mdl.get_output_data_type(desc, 0)))
    if out_dtype is None and from_dims:
        by_size: dict[int, np.dtype] = {2: np.dtype(np.float16), 4: np.dtype(np.float32)}
        out_dtype = by_size.get(row_bytes // from_dims)
    if out_dtype is None and from_dims is None:
        out_dtype = np.dtype(np.float32)
    if out_dtype is None or out_dtype.kind != "f" or out_dtype.itemsize not in (2, 4) or rem:
        raise StartupError(
            f"model {model.path}: output 0 ({out_dims}, {out_sizes[0]} bytes) is not "
            f"float32/float16 logits for a batch of {model_batch}"
        )
    classes = row_bytes // out_dtype.itemsize
    if from_dims is not None and from_dims != classes:
        raise StartupError(f"model {model.path}: output dims {out_dims} do not match its size {out_sizes[0]} bytes")
    if classes != model.num_classes:
        raise StartupError(
            f"[model.labels] model {model.path} outputs {classes} classes, but the labels have "
            f"{model.num_classes} names: set model.labels to a file with {classes} names"
        )
    return ModelIO(
        in_sizes=in_sizes,
        out_sizes=out_sizes,
        in_index=in_index,
        dyn_index=dyn_index,
        gears=tuple(gears),
        max_batch=max_batch,
        input_shape=input_shape,
        in_dtype=np_in,
        in_row=in_row,
        num_classes=classes,
        out_dtype=out_dtype,
        out_row=row_bytes,
        aipp=aipp,
    )


def aipp_preprocess(pp: Preprocess) -> Preprocess:
    """What an AIPP session's ``infer`` takes: the manifest's crop as uint8 RGB, HWC (the session converts
    it to NV12; the model's AIPP does colour conversion and normalisation)."""
    return dataclasses.replace(pp, layout="NHWC", dtype="uint8")
