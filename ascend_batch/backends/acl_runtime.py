"""pyACL's process-level side: the CANN constants pyACL does not export, return codes in words, and
``acl.init``/``acl.finalize`` once per process (:data:`ACL_PROCESS`).

``acl.init``/``acl.finalize`` are once per process: sessions of one process share them, the last
``close`` finalizes, and an ``atexit`` hook closes sessions still open when the interpreter exits
(``sys.exit`` from a signal handler included). Nothing here imports ``acl``; :func:`import_acl`
does, when a session is opened.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, Protocol

import numpy as np

from ..errors import BackendError, StartupError
from .base import Device

# Constants from CANN's acl_base.h / acl_rt.h / acl_mdl.h (pyACL exports none of them).
ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
# acl.rt.get_run_mode(): ACL_DEVICE = on the NPU's own CPU (host memory is device memory), ACL_HOST = a server
ACL_DEVICE, ACL_HOST = 0, 1
ACL_FORMAT_NCHW, ACL_FORMAT_NHWC = 0, 1
DYNAMIC_BATCH_INPUT = "ascend_mbatch_shape_data"
# aclmdlInputAippType and aclAippInputFormat (acl_mdl.h)
ACL_DATA_WITHOUT_AIPP, ACL_DATA_WITH_STATIC_AIPP = 0, 1
ACL_YUV420SP_U8 = 1

# aclDataType -> numpy (the ones an image classifier's input or output can have)
ACL_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.float16),
    2: np.dtype(np.int8),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    9: np.dtype(np.int64),
}

# Names of the codes users meet most (acl_base.h, rt_error_codes.h, ge_error_codes.h).
ERROR_NAMES: dict[int, str] = {
    100000: "ACL_ERROR_INVALID_PARAM",
    100001: "ACL_ERROR_UNINITIALIZE",
    100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE",
    100011: "ACL_ERROR_INVALID_MODEL_ID",
    100013: "ACL_ERROR_PARSE_MODEL",
    100014: "ACL_ERROR_READ_MODEL_FAILURE",
    100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
    100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
    100019: "ACL_ERROR_MODEL_NOT_DYNAMIC",
    100037: "ACL_ERROR_REPEAT_FINALIZE",
    148051: "ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED",
    200000: "ACL_ERROR_BAD_ALLOC",
    200002: "ACL_ERROR_INVALID_DEVICE",
    500000: "ACL_ERROR_INTERNAL_ERROR",
    500001: "ACL_ERROR_FAILURE",
    500002: "ACL_ERROR_GE_FAILURE",
    500003: "ACL_ERROR_RT_FAILURE",
    107000: "ACL_ERROR_RT_PARAM_INVALID",
    107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL",
    107003: "ACL_ERROR_RT_STREAM_CONTEXT",
    107004: "ACL_ERROR_RT_MODEL_CONTEXT",
    107017: "ACL_ERROR_RT_INVALID_HANDLE",
    207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207004: "ACL_ERROR_RT_NO_DEVICE",
    207005: "ACL_ERROR_RT_RESOURCE_ALLOC_FAIL",
    207008: "ACL_ERROR_RT_NO_STREAM_RESOURCE",
    207018: "ACL_ERROR_RT_DEVICE_OOM",
    507011: "ACL_ERROR_RT_MODEL_EXECUTE",
    507033: "ACL_ERROR_RT_DEV_SETUP_ERROR",
    507046: "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
    507052: "ACL_ERROR_RT_COPY_DATA",
    507899: "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
    545001: "ACL_ERROR_GE_LOAD_MODEL",
}

# What to check when one of these calls fails (added to its error message).
HINTS = {
    "acl.init": "is the CANN runtime installed and set_env.sh sourced?",
    "acl.rt.set_device": "check `npu-smi info` and ASCEND_RT_VISIBLE_DEVICES",
    "acl.rt.malloc": "out of device memory? lower runtime.batch_size or use fewer workers per NPU",
    "acl.mdl.load_from_file": "was the .om built by ATC for this chip (--soc_version) and this CANN version?",
}


def describe(call: str, ret: int) -> str:
    """``acl.rt.malloc returned 207001 (ACL_ERROR_RT_MEMORY_ALLOCATION)``."""
    name = ERROR_NAMES.get(ret)
    return f"{call} returned {ret}" + (f" ({name})" if name else "")


def call_error(device: Device, call: str, ret: int) -> BackendError:
    """The error for ``call`` returning ``ret`` on ``device``: the call, the code, its name, a hint."""
    hint = HINTS.get(call)
    return BackendError(f"device {device}: {describe(call, ret)}" + (f"; {hint}" if hint else ""))


def check_call(device: Device, call: str, ret: int) -> None:
    """Raise :func:`call_error` unless ``ret`` is ``ACL_SUCCESS``."""
    if ret != ACL_SUCCESS:
        raise call_error(device, call, ret)


def value_of(device: Device, call: str, result: tuple[Any, int]) -> Any:
    """The value of a pyACL ``(value, ret)`` pair, after checking ``ret``."""
    value, ret = result
    check_call(device, call, ret)
    return value


def import_acl() -> Any:
    """``import acl``, or a :class:`StartupError` saying what to install."""
    try:
        import acl
    except ImportError as exc:
        raise StartupError(
            f"backend 'acl' needs pyACL, the `acl` module of the Ascend CANN toolkit ({exc}); "
            "install CANN and `source /usr/local/Ascend/ascend-toolkit/set_env.sh` in the shell that runs "
            "the job"
        ) from exc
    return acl


class Closable(Protocol):
    def close(self) -> None: ...


class AclProcess:
    """``acl.init``/``acl.finalize`` once per process, shared by that process's sessions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid = -1
        self.users = 0
        self.owned = False  # False when someone else in the process (torch_npu, ...) initialised ACL
        self.sessions: dict[int, Closable] = {}
        self.hooked = False

    def _this_process(self) -> None:
        if self.pid != os.getpid():  # a forked child inherits none of the parent's ACL state
            self.pid, self.users, self.owned = os.getpid(), 0, False
            self.sessions = {}

    def acquire(self, acl: Any, device: Device) -> None:
        with self.lock:
            self._this_process()
            if self.users == 0:
                ret = acl.init()
                if ret == ACL_ERROR_REPEAT_INITIALIZE:
                    self.owned = False
                elif ret != ACL_SUCCESS:
                    raise BackendError(f"device {device}: {describe('acl.init', ret)}; {HINTS['acl.init']}")
                else:
                    self.owned = True
                if not self.hooked:
                    atexit.register(self.close_all)
                    self.hooked = True
            self.users += 1

    def release(self, acl: Any) -> int:
        with self.lock:
            self.users -= 1
            if self.users > 0 or not self.owned:
                return ACL_SUCCESS
            self.owned = False
            ret = acl.finalize()
            return ACL_SUCCESS if ret == ACL_ERROR_REPEAT_FINALIZE else int(ret)

    def register(self, session: Closable) -> None:
        with self.lock:
            self._this_process()
            self.sessions[id(session)] = session

    def unregister(self, session: Closable) -> None:
        with self.lock:
            self.sessions.pop(id(session), None)

    def close_all(self) -> None:
        """At interpreter exit: close what is still open, newest first."""
        with self.lock:
            if self.pid != os.getpid():
                return
            sessions = list(self.sessions.values())
        for session in reversed(sessions):
            try:
                session.close()
            except Exception as exc:
                print(f"ascend-batch: {exc}", file=sys.stderr)


ACL_PROCESS = AclProcess()
