"""onnxruntime backend: CPU by default, CUDA when the device asks for it and the provider exists."""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from .base import BackendFeatures, Device, SessionBase, SessionFeatures


class OnnxSession(SessionBase):
    # InferenceSession.run is thread-safe: the worker may run batches side by side
    features = SessionFeatures(concurrent_infer=True)

    def __init__(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> None:
        import onnxruntime as ort

        self.device = device
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # no busy-waiting between ops: the decode threads need those cycles (measured: see README)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        if device.kind == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise StartupError(
                    f"device {device}: onnxruntime has no CUDA provider here (providers: {', '.join(available)}); "
                    "install onnxruntime-gpu or use devices = ['cpu:0']"
                )
            providers: list = [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
        elif device.kind == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise StartupError(f"device {device}: onnxruntime runs on cpu or cuda devices")
        try:
            self._sess: ort.InferenceSession | None = ort.InferenceSession(
                str(model.path), sess_options=opts, providers=providers
            )
        except Exception as exc:
            raise StartupError(f"device {device}: cannot load ONNX model {model.path}: {exc}") from exc
        inp = self._sess.get_inputs()[0]
        self._input_name = inp.name
        self._output_name = self._sess.get_outputs()[0].name
        dims = list(inp.shape)
        static = isinstance(dims[0], int) and dims[0] > 0
        self.max_batch = int(dims[0]) if static else batch_size
        self._static = static
        expected = model.preprocess.input_shape(self.max_batch)
        for got, want in zip(dims[1:], expected[1:], strict=False):
            if isinstance(got, int) and got > 0 and got != want:
                raise StartupError(
                    f"model {model.path} expects input {dims}, but the manifest's preprocessing gives "
                    f"{list(expected)} (check model.input_size and model.layout)"
                )
        self.input_shape = expected
        self._dtype = model.preprocess.numpy_dtype

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if self._static and n < self.max_batch:
            padded = np.zeros((self.max_batch, *batch.shape[1:]), dtype=batch.dtype)
            padded[:n] = batch
            batch = padded
        if self._sess is None:
            raise BackendError(f"device {self.device}: session is closed")
        try:
            out = self._sess.run([self._output_name], {self._input_name: batch})[0]
        except Exception as exc:
            if _out_of_memory(exc):  # the machine's failure (exit 8), not the runtime's or an image's
                raise MemoryError(f"device {self.device}: onnxruntime could not allocate memory: {exc}") from exc
            raise BackendError(f"device {self.device}: onnxruntime run failed: {exc}") from exc
        return np.asarray(out[:n], dtype=np.float32).reshape(n, -1)

    def close(self) -> None:
        self._sess = None


class OnnxBackend:
    name = "onnxruntime"
    features = BackendFeatures(open_in_thread=True)  # sessions are not bound to the opening thread

    def open(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> OnnxSession:
        return OnnxSession(device, model, batch_size=batch_size, threads=threads)


# how onnxruntime says that an allocation failed (its arenas on CPU and CUDA; a C++ bad_alloc)
_OOM_SIGNS = ("Failed to allocate memory", "bad_alloc", "CUDA out of memory", "CUDNN_STATUS_ALLOC_FAILED")


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(sign in str(exc) for sign in _OOM_SIGNS)
