"""Constants of the emulated pyACL: return codes from CANN's headers, the codes injected failures
return, enums and dtype tables. pyACL itself exports none of these: callers spell the numbers."""

from __future__ import annotations

import numpy as np

# --- return codes (acl_base.h, rt_error_codes.h, ge_error_codes.h) -----------------------------
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_PARSE_MODEL = 100013
ACL_ERROR_READ_MODEL_FAILURE = 100014
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_NOT_STATIC_AIPP = 100038  # older CANN's answer of get_first_aipp_info; newer: ACL_ERROR_GE_AIPP_NOT_EXIST
ACL_ERROR_GE_AIPP_NOT_EXIST = 145015
ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED = 148051
ACL_ERROR_FEATURE_UNSUPPORTED = 200006
ACL_ERROR_INTERNAL_ERROR = 500000
ACL_ERROR_FAILURE = 500001
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_STREAM_CONTEXT = 107003
ACL_ERROR_RT_MODEL_CONTEXT = 107004
ACL_ERROR_RT_INVALID_HANDLE = 107017
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_RT_RESOURCE_ALLOC_FAIL = 207005
ACL_ERROR_RT_NO_STREAM_RESOURCE = 207008
ACL_ERROR_RT_MODEL_EXECUTE = 507011
ACL_ERROR_RT_AICPU_EXCEPTION = 507018  # what rtStreamSynchronize reports for a failed DVPP task
ACL_ERROR_RT_DEV_SETUP_ERROR = 507033
ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046
ACL_ERROR_RT_COPY_DATA = 507052
ACL_ERROR_GE_LOAD_MODEL = 545001
# JPEGD's per-picture result codes (acl.media.dvpp_get_pic_desc_ret_code). Emulator choice: the
# hi_mpi codes of CANN's hi_vdec.h (JPEGD is a VDEC payload there); the values Ascend 310 writes are
# not documented, so the backend must treat any non-zero value as "this picture failed".
JPEGD_ERR_ILLEGAL_PARAM = 0xA0058003  # HI_ERR_VDEC_ILLEGAL_PARAM: the output does not fit the picture
JPEGD_ERR_NOT_SUPPORT = 0xA0058008  # HI_ERR_VDEC_NOT_SUPPORT: a JPEG JPEGD cannot decode
JPEGD_ERR_STREAM = 0xA0058015  # HI_ERR_VDEC_SYS_ERROR: a corrupt or truncated stream

# what an injected failure returns, by call (realistic codes for that call)
INJECTED_CODES = {
    "init": ACL_ERROR_FAILURE,
    "rt.set_device": ACL_ERROR_RT_DEV_SETUP_ERROR,
    "rt.create_context": ACL_ERROR_RT_RESOURCE_ALLOC_FAIL,
    "rt.create_stream": ACL_ERROR_RT_NO_STREAM_RESOURCE,
    "rt.malloc": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "rt.malloc_host": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "rt.memcpy": ACL_ERROR_RT_COPY_DATA,
    "rt.synchronize_stream": ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    "mdl.load_from_file": ACL_ERROR_GE_LOAD_MODEL,
    "mdl.execute": ACL_ERROR_RT_MODEL_EXECUTE,
    "mdl.execute_async": ACL_ERROR_RT_MODEL_EXECUTE,
    "mdl.set_dynamic_batch_size": ACL_ERROR_INVALID_PARAM,
    "media.dvpp_malloc": ACL_ERROR_RT_MEMORY_ALLOCATION,
    "media.dvpp_create_channel": ACL_ERROR_RT_RESOURCE_ALLOC_FAIL,
    "media.dvpp_vpc_crop_async": ACL_ERROR_RT_AICPU_EXCEPTION,
    "media.dvpp_vpc_crop_resize_async": ACL_ERROR_RT_AICPU_EXCEPTION,
    "media.dvpp_vpc_resize_async": ACL_ERROR_RT_AICPU_EXCEPTION,
    # special: the call succeeds and JPEGD rejects the picture at run time (the output pic desc's
    # ret code after synchronize_stream); see acl.media
    "media.dvpp_jpeg_decode_async": JPEGD_ERR_NOT_SUPPORT,
}

# enums
ACL_FLOAT, ACL_FLOAT16, ACL_INT8, ACL_INT32, ACL_UINT8, ACL_INT64 = 0, 1, 2, 3, 4, 9
ACL_FORMAT_NCHW, ACL_FORMAT_NHWC, ACL_FORMAT_ND = 0, 1, 2
ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE = 0, 1
ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 2, 3
ACL_DEVICE, ACL_HOST = 0, 1  # run modes

NP_OF_ACL = {
    ACL_FLOAT: np.dtype(np.float32),
    ACL_FLOAT16: np.dtype(np.float16),
    ACL_INT8: np.dtype(np.int8),
    ACL_INT32: np.dtype(np.int32),
    ACL_UINT8: np.dtype(np.uint8),
    ACL_INT64: np.dtype(np.int64),
}
ACL_OF_NP = {v: k for k, v in NP_OF_ACL.items()}
GARBAGE = 0xCD  # fresh device memory is not zeroed on a real NPU either
