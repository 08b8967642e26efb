"""The manifest's backend registry (ascend_batch.manifest.rules): every backend has rules, a [runtime] key
of one backend given to another is an error naming the key, the defaults come out as documented, and
the fingerprint of a manifest never changes (it names existing output directories)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from ascend_batch.backends.base import BACKENDS, DEVICE_KINDS, get_backend
from ascend_batch.errors import ManifestErrors
from ascend_batch.manifest import (
    BACKEND_RULES,
    CPU_BATCH_SIZE,
    DEFAULT_EXTENSIONS,
    PLUGIN_RULES,
    RUNTIME_KEYS,
    DatasetConfig,
    Manifest,
    RuntimeConfig,
    RuntimeKey,
    parse_manifest,
    rules_for,
)
from ascend_batch.manifest.rules import DEVICE_DECODE, FORMAT_BY_SUFFIX
from ascend_batch.models.spec import MODEL_FORMATS

PLUGIN = "some.package:SomeBackend"  # never imported by the manifest


def manifest(tmp_path: Path, backend: str, runtime: dict[str, Any] | None = None, **model: Any) -> Manifest:
    """A valid manifest for ``backend`` (with a model file of a format it runs) plus ``runtime``."""
    rules = rules_for(backend)
    suffix = next(s for s, f in FORMAT_BY_SUFFIX.items() if f in rules.formats)
    (tmp_path / f"model{suffix}").write_bytes(b"")
    data = {
        "job": {"output": "out"},
        "dataset": {"paths": ["imgs/*.jpg"]},  # a glob: need not exist
        "model": {"path": f"model{suffix}", **model},
        "runtime": {"backend": backend, **(runtime or {})},
    }
    return parse_manifest(data, tmp_path)


def errors(tmp_path: Path, backend: str, runtime: dict[str, Any] | None = None, **model: Any) -> list[str]:
    with pytest.raises(ManifestErrors) as info:
        manifest(tmp_path, backend, runtime, **model)
    return [str(e) for e in info.value.errors]


def a_value(key: RuntimeKey) -> Any:
    """A valid value for ``key`` that is not its default."""
    return key.choices[-1] if key.choices else not getattr(RuntimeConfig(), key.name)


def test_every_backend_has_rules() -> None:
    assert set(BACKEND_RULES) == set(BACKENDS)
    for name, rules in BACKEND_RULES.items():
        assert rules.entry is BACKENDS[name]
        assert rules.default_device_kind in rules.device_kinds, name
        assert set(rules.formats) <= set(MODEL_FORMATS), name
        assert set(rules.device_kinds) == set(DEVICE_KINDS) or rules.wrong_device, name
        for kind in rules.formats:  # every format a backend runs can be guessed from some suffix
            assert kind in FORMAT_BY_SUFFIX.values(), (name, kind)


def test_every_runtime_key_is_a_runtime_field_read_by_some_backend() -> None:
    fields = RuntimeConfig.__dataclass_fields__
    for key in RUNTIME_KEYS:
        assert key.name in fields, key
        assert any(key in rules.keys for rules in BACKEND_RULES.values()), key
    assert set(PLUGIN_RULES.keys) == set(RUNTIME_KEYS)


@pytest.mark.parametrize("backend", list(BACKEND_RULES))
def test_rules_match_what_the_backend_class_declares(backend: str) -> None:
    """gpu_decode only where the class declares a device decode stage; option keys reach its constructor."""
    rules = BACKEND_RULES[backend]
    cls = getattr(importlib.import_module(rules.entry.module), rules.entry.cls)  # no runtime imported yet
    assert cls.features.device_decode == (DEVICE_DECODE in rules.keys)
    options = {key.name: a_value(key) for key in rules.keys if key.option}
    assert get_backend(backend, options).name == backend


@pytest.mark.parametrize(
    ("backend", "key"),
    [(b, k) for b, rules in BACKEND_RULES.items() for k in RUNTIME_KEYS if k not in rules.keys],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_a_key_of_another_backend_is_an_error_naming_it(tmp_path: Path, backend: str, key: RuntimeKey) -> None:
    readers = [b for b, rules in BACKEND_RULES.items() if key in rules.keys]
    messages = errors(tmp_path, backend, {key.name: a_value(key)})
    want = f"[runtime.{key.name}] only the {' or '.join(readers)} backend uses this key (backend is {backend!r})"
    assert [m for m in messages if want in m] and len(messages) == 1, messages


@pytest.mark.parametrize(
    ("backend", "key"),
    [(b, k) for b, rules in BACKEND_RULES.items() for k in rules.keys] + [(PLUGIN, k) for k in RUNTIME_KEYS],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_a_backend_takes_its_own_keys(tmp_path: Path, backend: str, key: RuntimeKey) -> None:
    value = a_value(key)
    rt = manifest(tmp_path, backend, {key.name: value}).runtime
    assert getattr(rt, key.name) == value
    assert (key.name in rt.backend_options()) == key.option


@pytest.mark.parametrize("key", [k for k in RUNTIME_KEYS if k.choices])
def test_a_choice_key_names_its_choices(tmp_path: Path, key: RuntimeKey) -> None:
    backend = next(b for b, rules in BACKEND_RULES.items() if key in rules.keys)
    messages = errors(tmp_path, backend, {key.name: "nonsense"})
    assert any(f"[runtime.{key.name}] expected one of {', '.join(key.choices)}" in m for m in messages), messages


def test_unknown_key_lists_only_the_keys_this_backend_allows(tmp_path: Path) -> None:
    for backend, rules in BACKEND_RULES.items():
        (message,) = errors(tmp_path, backend, {"bogus": 1})
        allowed = message.split("allowed keys: ")[1].split(", ")
        assert "[runtime.bogus] unknown key" in message
        assert {"backend", "devices", "batch_size"} <= set(allowed)
        assert {k.name for k in RUNTIME_KEYS} & set(allowed) == {k.name for k in rules.keys}, backend


@pytest.mark.parametrize("backend", list(BACKEND_RULES))
def test_devices_of_another_kind_are_refused(tmp_path: Path, backend: str) -> None:
    rules = BACKEND_RULES[backend]
    for kind in DEVICE_KINDS:
        devices = {"devices": [f"{kind}:0"]}
        if kind in rules.device_kinds:
            assert manifest(tmp_path, backend, devices).runtime.devices[0].kind == kind
        else:
            messages = errors(tmp_path, backend, devices)
            assert any(f"[runtime.devices] {rules.wrong_device}" in m for m in messages), messages


@pytest.mark.parametrize("backend", list(BACKEND_RULES))
def test_model_formats_of_another_backend_are_refused(tmp_path: Path, backend: str) -> None:
    rules = BACKEND_RULES[backend]
    for fmt in MODEL_FORMATS:
        if fmt in rules.formats:
            assert manifest(tmp_path, backend, format=fmt).model.format == fmt
        else:
            messages = errors(tmp_path, backend, format=fmt)
            assert any(f"[model.format] backend {backend!r} cannot run {fmt!r}" in m for m in messages), messages


def test_needs_model_path(tmp_path: Path) -> None:
    for backend, rules in BACKEND_RULES.items():
        data = {"job": {"output": "o"}, "dataset": {"paths": ["*.jpg"]}, "runtime": {"backend": backend}}
        if rules.needs_model_path is None:
            assert parse_manifest(data, tmp_path).model.name == "efficientnet_lite0"
        else:
            with pytest.raises(ManifestErrors) as info:
                parse_manifest(data, tmp_path)
            assert [str(e) for e in info.value.errors] == [f"[model.path] {rules.needs_model_path}"]


def test_unknown_backend_and_plugins(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        rules_for("tensorflow")
    assert rules_for(PLUGIN) is PLUGIN_RULES
    rt = manifest(tmp_path, PLUGIN, {"devices": ["npu:1", 0], "precision": "bf16"}).runtime
    assert [str(d) for d in rt.devices] == ["npu:1", "cpu:0"]  # a bare index means a CPU for a plugin
    assert rt.backend_options() == {"precision": "bf16"}


def test_defaults_come_out_as_documented(tmp_path: Path) -> None:
    """The values README's manifest reference gives as defaults, from the smallest manifest."""
    m = parse_manifest({"job": {"output": "out"}, "dataset": {"paths": ["*.jpg"]}}, tmp_path)
    assert (m.job.name, m.job.output, m.job.max_error_fraction) == ("job", tmp_path / "out", None)
    ds = m.dataset
    assert ds.extensions == DEFAULT_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    assert (ds.max_pixels, ds.max_member_bytes, ds.decode_timeout) == (178956970, 268435456, 30.0)
    assert ds.skip_existing == ()
    assert m.model.name == "efficientnet_lite0" and m.model.path is None
    rt = m.runtime
    assert (rt.backend, [str(d) for d in rt.devices]) == ("onnxruntime", ["cpu:0"])
    assert rt.batch_size == CPU_BATCH_SIZE == 8
    assert (rt.unit_size, rt.threads, rt.streams, rt.decode_workers, rt.prefetch, rt.max_retries) == (
        1000,
        0,
        0,
        0,
        2,
        2,
    )
    assert (rt.precision, rt.channels_last, rt.compile, rt.device_decode) == (None, None, None, True)
    assert rt.backend_options() == {}
    # the parsed defaults are the dataclasses' own: declared once
    assert rt == RuntimeConfig(batch_size=CPU_BATCH_SIZE)
    assert ds == DatasetConfig(paths=("*.jpg",), resolved=(tmp_path / "*.jpg",))


@pytest.mark.parametrize(("backend", "device", "batch"), [("acl", "npu:0", 32), ("torch", "cuda:0", 32)])
def test_accelerator_backends_default_to_their_device_kind(
    tmp_path: Path, backend: str, device: str, batch: int
) -> None:
    rt = manifest(tmp_path, backend).runtime
    assert [str(d) for d in rt.devices] == [device]
    assert rt.batch_size == batch == RuntimeConfig.batch_size
    assert BACKEND_RULES[backend].default_device_kind == device.split(":")[0]


# computed with the manifest module as it was before the split into a package
PINNED = {"plain": "22327679545ecaa1", "custom": "452983634441047a"}


def test_fingerprint_is_pinned() -> None:
    """The same manifest must name the same output directory in every version (CHANGELOG): these
    values were computed before the manifest module was split; a change here orphans results."""
    base = Path("/nonexistent/jobs")
    plain = {"job": {"output": "out"}, "dataset": {"paths": ["imgs/*.jpg"]}}
    custom = {
        "job": {"output": "out"},
        "dataset": {"paths": ["a/*.tar"], "extensions": [".JPG"], "decode_timeout": 5, "max_pixels": 1000},
        "model": {
            "name": "efficientnet_lite0",
            "input_size": 240,
            "mean": 127,
            "std": [1, 2, 3],
            "layout": "NHWC",
            "dtype": "float16",
            "interpolation": "bicubic",
        },
        "runtime": {"backend": "torch", "precision": "bf16", "devices": [1]},
    }
    assert parse_manifest(plain, base).fingerprint() == PINNED["plain"]
    assert parse_manifest(custom, base).fingerprint() == PINNED["custom"]


@pytest.mark.parametrize("backend", ["torch", "acl"])
def test_device_decode_and_its_old_name(tmp_path: Path, backend: str) -> None:
    assert manifest(tmp_path, backend).runtime.device_decode is True
    assert manifest(tmp_path, backend, {"device_decode": False}).runtime.device_decode is False
    assert manifest(tmp_path, backend, {"gpu_decode": False}).runtime.device_decode is False  # still accepted
    assert manifest(tmp_path, backend, {"gpu_decode": False, "device_decode": False}).runtime.device_decode is False
    (msg,) = errors(tmp_path, backend, {"gpu_decode": False, "device_decode": True})
    assert "[runtime.gpu_decode] contradicts runtime.device_decode" in msg


def test_device_decode_is_refused_where_no_backend_reads_it(tmp_path: Path) -> None:
    for key in ("device_decode", "gpu_decode"):
        (msg,) = errors(tmp_path, "onnxruntime", {key: True})
        assert f"[runtime.{key}] only the acl or torch backend uses this key" in msg


def test_model_aipp_is_checked_and_leaves_old_fingerprints_alone(tmp_path: Path) -> None:
    assert manifest(tmp_path, "acl", aipp="yuv420sp").model.aipp == "yuv420sp"
    assert manifest(tmp_path, "acl").model.aipp is None
    (msg,) = errors(tmp_path, "acl", aipp="rgb")
    assert "[model.aipp]" in msg and "yuv420sp" in msg
    assert manifest(tmp_path, "acl").fingerprint() != manifest(tmp_path, "acl", aipp="none").fingerprint()


def test_stall_timeout_is_a_positive_number_of_seconds(tmp_path: Path) -> None:
    assert manifest(tmp_path, "onnxruntime").runtime.stall_timeout == 600.0
    assert manifest(tmp_path, "onnxruntime", {"stall_timeout": 90}).runtime.stall_timeout == 90.0
    for bad in (0, -5, "600", True):
        (msg,) = errors(tmp_path, "onnxruntime", {"stall_timeout": bad})
        assert "[runtime.stall_timeout] expected a positive number of seconds" in msg, msg


def test_stall_timeout_outlasts_one_decode(tmp_path: Path) -> None:
    def parse(decode_timeout: float, runtime: dict[str, Any]) -> Manifest:
        data = {
            "job": {"output": "out"},
            "dataset": {"paths": ["*.jpg"], "decode_timeout": decode_timeout},
            "runtime": runtime,
        }
        return parse_manifest(data, tmp_path)

    with pytest.raises(ManifestErrors) as info:
        parse(30, {"stall_timeout": 30})
    (msg,) = [str(e) for e in info.value.errors]
    assert "[runtime.stall_timeout] expected more seconds than dataset.decode_timeout (30), got 30" in msg
    assert parse(30, {"stall_timeout": 31}).runtime.stall_timeout == 31.0
    with pytest.raises(ManifestErrors) as info:
        parse(900, {"stall_timeout": -1})
    assert len(info.value.errors) == 1  # a wrong value is one error, not also "not longer than a decode"
    # left out, it is twice a decode_timeout that makes the default too short
    assert parse(400, {}).runtime.stall_timeout == 800.0
    assert parse(300, {}).runtime.stall_timeout == 600.0


def test_stall_timeout_is_a_runtime_setting_outside_the_fingerprint(tmp_path: Path) -> None:
    from ascend_batch.runner.jobdir import result_tables

    plain, other = manifest(tmp_path, "onnxruntime"), manifest(tmp_path, "onnxruntime", {"stall_timeout": 45})
    assert plain.fingerprint() == other.fingerprint()
    assert result_tables(plain) == result_tables(other)
