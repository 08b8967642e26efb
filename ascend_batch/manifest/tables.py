"""One reader per manifest table: ``[job]``, ``[dataset]``, ``[model]``, ``[runtime]``. Each reads its
keys through a :class:`~.reader.TableReader` and passes only what the manifest set to its dataclass,
so every default is the dataclass field's (or a named constant for the few that depend on other
keys). Backend-specific rules come from :mod:`.rules`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..backends.base import BACKENDS, Device, parse_device
from ..models.spec import MODEL_FORMATS
from ..preprocess import DTYPES, LAYOUTS, RESAMPLE
from .config import (
    AIPP_INPUTS,
    BUILTIN_MODELS,
    DEFAULT_JOB_NAME,
    DEFAULT_MODEL,
    DatasetConfig,
    JobConfig,
    ModelConfig,
    RuntimeConfig,
    default_batch_size,
)
from .reader import TableReader, read_triple, resolve_path
from .rules import (
    DEVICE_DECODE,
    DEVICE_DECODE_ALIAS,
    FORMAT_BY_SUFFIX,
    RUNTIME_KEYS,
    BackendRules,
    readers_of,
    rules_for,
)

# [runtime] integers every backend reads, with their minimum (their defaults: RuntimeConfig)
RUNTIME_INTS = {"unit_size": 1, "threads": 0, "streams": 0, "decode_workers": 0, "prefetch": 1, "max_retries": 0}


def read_job(r: TableReader, base: Path) -> JobConfig:
    name = r.get("name", str, "a string")
    output = r.get("output", str, "a path string")
    if not r.present:
        r.fail("job", "missing table [job] (needs at least output = '...')")
    elif not r.has("output"):
        r.fail("job.output", "missing: the Parquet output directory")
    fraction = r.get("max_error_fraction", float, "a number between 0 and 1")
    fraction = r.check("max_error_fraction", fraction, lambda v: 0.0 <= v <= 1.0, "expected a number between 0 and 1")
    report = r.get("report", bool, "true or false")
    r.finish()
    return JobConfig(
        name=DEFAULT_JOB_NAME if name is None else name,
        output=resolve_path(base, output or "."),
        max_error_fraction=fraction,
        report=bool(report),
    )


def read_dataset(r: TableReader, base: Path) -> DatasetConfig:
    paths = r.get("paths", list, "a list of paths (directories, globs, archives, list files)")
    resolved: list[Path] = []
    if not r.present:
        r.fail("dataset", "missing table [dataset] (needs paths = [...])")
    elif not r.has("paths"):
        r.fail("dataset.paths", "missing: a list of directories, globs, archives or list files")
    elif paths is not None:
        if not paths:
            r.fail("dataset.paths", "expected at least one path")
        for i, p in enumerate(paths):
            if not isinstance(p, str) or not p:
                r.fail(f"dataset.paths[{i}]", f"expected a path string, got {p!r}")
                continue
            full = resolve_path(base, p)
            # a glob may match nothing (a quiet night); a plain path must exist
            if not any(ch in p for ch in "*?[") and not full.exists():
                r.fail(f"dataset.paths[{i}]", f"no such file or directory: {full}")
            resolved.append(full)
    options: dict[str, Any] = {}
    exts = r.get("extensions", list, "a list of file extensions like ['.jpg', '.png']")
    if exts is not None:
        if not exts or any(not isinstance(e, str) or not e.startswith(".") for e in exts):
            r.fail("dataset.extensions", f"expected extensions starting with '.', got {exts!r}")
        else:
            options["extensions"] = tuple(e.lower() for e in exts)
    options["max_pixels"] = r.integer("max_pixels", 1, "a positive integer")
    options["max_member_bytes"] = r.integer("max_member_bytes", 1, "a positive integer (bytes)")
    timeout = r.get("decode_timeout", float, "a positive number of seconds")
    timeout = r.check("decode_timeout", timeout, lambda v: v > 0, "expected a positive number of seconds")
    options["decode_timeout"] = None if timeout is None else float(timeout)  # 30 -> 30.0: the fingerprint's spelling
    skip = r.get("skip_existing", list, "a list of earlier output directories") or []
    for i, p in enumerate(skip):
        if not isinstance(p, str):
            r.fail(f"dataset.skip_existing[{i}]", f"expected a path string, got {p!r}")
    options["skip_existing"] = tuple(resolve_path(base, p) for p in skip if isinstance(p, str))
    r.finish()
    return DatasetConfig(
        paths=tuple(p for p in (paths or []) if isinstance(p, str)),
        resolved=tuple(resolved),
        **{k: v for k, v in options.items() if v is not None},
    )


def _existing(r: TableReader, name: str, base: Path, value: str | None) -> Path | None:
    """A path key's value resolved against the manifest's folder; an error if nothing is there."""
    path = resolve_path(base, value) if value else None
    if path is not None and not path.exists():
        r.fail(r.key(name), f"no such file: {path}")
    return path


def read_model(r: TableReader, base: Path) -> ModelConfig:
    name = r.get("name", str, "a built-in model name")
    given_path = r.get("path", str, "a path to a model file")
    fmt = r.choice("format", MODEL_FORMATS)
    if name is not None and name not in BUILTIN_MODELS and given_path is None:
        r.fail(
            "model.name",
            f"unknown built-in model {name!r}; built-in: {', '.join(BUILTIN_MODELS)} "
            "(or give model.path for your own model)",
        )
    path = _existing(r, "path", base, given_path)
    if path is not None and fmt is None:
        fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
        if fmt is None:
            r.fail(
                "model.format",
                f"cannot tell the format of {path.name}; set format = one of {', '.join(MODEL_FORMATS)}",
            )
    labels = _existing(r, "labels", base, r.get("labels", str, "a path to a labels file (.txt or .csv)"))
    weights = _existing(r, "weights", base, r.get("weights", str, "a path to a weights file"))
    arch = r.get("arch", str, "an architecture name")
    input_size = r.integer("input_size", 1, "a positive integer (pixels)")
    resize = r.integer("resize", 1, "a positive integer (short side in pixels)")
    mean = read_triple(r, "mean")
    std = read_triple(r, "std")
    if std is not None and any(s == 0 for s in std):
        r.fail("model.std", "std values must be non-zero")
        std = None
    layout = r.choice("layout", LAYOUTS)
    dtype = r.choice("dtype", DTYPES)
    interpolation = r.choice("interpolation", RESAMPLE)
    aipp = r.choice("aipp", AIPP_INPUTS)
    r.finish()
    return ModelConfig(
        name=DEFAULT_MODEL if name is None and path is None else name,
        path=path,
        format=fmt,
        arch=arch,
        weights=weights,
        labels=labels,
        input_size=input_size,
        resize=resize,
        mean=mean,
        std=std,
        layout=layout,
        dtype=dtype,
        interpolation=interpolation,
        aipp=aipp,
    )


def _read_backend(r: TableReader) -> tuple[str, BackendRules]:
    expected = f"one of {', '.join(BACKENDS)}"
    backend = r.get("backend", str, expected)
    if backend is None:
        backend = RuntimeConfig.backend
    try:
        return backend, rules_for(backend)
    except KeyError:
        r.fail("runtime.backend", f"expected {expected} (or a plugin 'module:Class'), got {backend!r}")
        return RuntimeConfig.backend, rules_for(RuntimeConfig.backend)


def _read_devices(r: TableReader, rules: BackendRules) -> tuple[Device, ...]:
    raw = r.get("devices", (list, int, str), "a list of devices like ['cpu:0', 'cpu:1'] or [0, 1]")
    if raw is None:
        return (Device(rules.default_device_kind, 0),)
    if not isinstance(raw, list):
        raw = [raw]
    if not raw:
        r.fail("runtime.devices", "expected at least one device")
    devices: list[Device] = []
    for i, spec in enumerate(raw):
        try:
            devices.append(parse_device(spec, rules.default_device_kind))
        except ValueError as exc:
            r.fail(f"runtime.devices[{i}]", str(exc))
    if len(set(devices)) != len(devices):
        r.fail("runtime.devices", f"a device is listed twice: {[str(d) for d in devices]}")
    if any(d.kind not in rules.device_kinds for d in devices):
        r.fail("runtime.devices", rules.wrong_device)
    return tuple(devices)


def read_runtime(r: TableReader) -> RuntimeConfig:
    backend, rules = _read_backend(r)
    devices = _read_devices(r, rules)
    values: dict[str, Any] = {"batch_size": r.integer("batch_size", 1)}
    if values["batch_size"] is None:
        values["batch_size"] = default_batch_size(devices)
    values.update((name, r.integer(name, minimum)) for name, minimum in RUNTIME_INTS.items())
    stall = r.get("stall_timeout", float, "a positive number of seconds")
    stall = r.check("stall_timeout", stall, lambda v: v > 0, "expected a positive number of seconds")
    values["stall_timeout"] = None if stall is None else float(stall)
    for key in RUNTIME_KEYS:
        if key in rules.keys:
            value = r.get(key.name, key.kind, key.expected)
            values[key.name] = r.check(key.name, value, key.allows, f"expected {key.expected}")
            if key is DEVICE_DECODE:
                values[key.name] = _device_decode_alias(r, values[key.name])
        else:
            readers = " or ".join(readers_of(key))
            r.refuse(key.name, f"only the {readers} backend uses this key (backend is {backend!r})")
            if key is DEVICE_DECODE:
                r.refuse(DEVICE_DECODE_ALIAS, f"only the {readers} backend uses this key (backend is {backend!r})")
    r.finish()
    return RuntimeConfig(backend=backend, devices=devices, **{k: v for k, v in values.items() if v is not None})


def _device_decode_alias(r: TableReader, value: bool | None) -> bool | None:
    """``runtime.gpu_decode``, the earlier name of ``runtime.device_decode``, is still accepted."""
    alias = r.get(DEVICE_DECODE_ALIAS, bool, DEVICE_DECODE.expected)
    if alias is None:
        return value
    if value is not None and value != alias:
        r.fail(f"runtime.{DEVICE_DECODE_ALIAS}", "contradicts runtime.device_decode (its new name): keep one of them")
    return alias if value is None else value


def check_stall_timeout(r: TableReader, runtime: RuntimeConfig, dataset: DatasetConfig) -> RuntimeConfig:
    """``runtime.stall_timeout`` must outlast one decode that ``dataset.decode_timeout`` ends (a worker
    waits that long for it without a word); left out, it is the default, or twice ``decode_timeout``
    where that is longer. ``r`` reads ``[runtime]``."""
    if not r.has("stall_timeout"):
        longer = max(runtime.stall_timeout, 2 * dataset.decode_timeout)
        return runtime if longer == runtime.stall_timeout else dataclasses.replace(runtime, stall_timeout=longer)
    if any(e.key == r.key("stall_timeout") for e in r.errors):
        return runtime  # already said: not a number of seconds
    if runtime.stall_timeout <= dataset.decode_timeout:
        r.fail(
            "runtime.stall_timeout",
            f"expected more seconds than dataset.decode_timeout ({dataset.decode_timeout:g}), got "
            f"{runtime.stall_timeout:g}: a worker may wait that long for one decode without a word "
            "(twice as long or more is safe)",
        )
    return runtime


def check_backend_runs_model(r: TableReader, runtime: RuntimeConfig, model: ModelConfig) -> None:
    """The cross-table rules: the backend runs the model's format, and has the model it needs.
    ``r`` is any reader (for its error list); the errors name ``model.*`` keys."""
    rules = rules_for(runtime.backend)
    if model.format is not None and model.path is not None and model.format not in rules.formats:
        r.fail(
            "model.format",
            f"backend {runtime.backend!r} cannot run {model.format!r} models (it runs: {', '.join(rules.formats)})",
        )
    if rules.needs_model_path and model.path is None:
        r.fail("model.path", rules.needs_model_path)
