"""The default model's ONNX cache: the test suite never writes into the user's real cache, and
``validate`` never converts (it says where the first run will cache the conversion)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cli, make_images, write_manifest

from ascend_batch.models import efficientnet_lite0 as lite0
from ascend_batch.models.spec import file_sha256


def _users_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the cache would be without ASCEND_BATCH_CACHE."""
    with monkeypatch.context() as m:
        m.delenv("ASCEND_BATCH_CACHE", raising=False)
        return lite0.default_cache_dir()


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Names, sizes and mtimes of what ``folder`` holds (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _default_model_job(tmp: Path, extra_model: str = "") -> Path:
    make_images(tmp / "imgs", 2)
    body = f"""
[job]
output = "out"
[dataset]
paths = ["imgs"]
[model]
name = "efficientnet_lite0"
{extra_model}
[runtime]
devices = ["cpu:0"]
batch_size = 2
threads = 1
decode_workers = 1
"""
    return write_manifest(tmp / "job.toml", body)


def test_session_cache_is_a_temp_dir(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert os.environ["ASCEND_BATCH_CACHE"] == str(model_cache)
    assert lite0.default_cache_dir() == model_cache
    if not os.environ.get("CI"):  # CI keeps its own folder (a venv's), never the user's either
        assert model_cache.is_relative_to(tmp_path_factory.getbasetemp())


def test_run_under_tests_caches_in_the_session_dir(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = _users_cache(monkeypatch)
    assert not users.is_relative_to(model_cache)
    before = _state(users)
    manifest = _default_model_job(tmp_path)
    r = cli("run", manifest, "--no-progress")
    assert r.returncode == 0, r.stderr
    sha = file_sha256(lite0.default_weights_path())
    assert lite0.cached_onnx(sha) == lite0.cache_path(sha, model_cache)  # the subprocess wrote it here
    assert _state(users) == before  # and nothing in ~/.cache (or $XDG_CACHE_HOME)


def test_validate_does_not_convert(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    manifest = _default_model_job(tmp_path)
    r = cli("validate", manifest, env={"ASCEND_BATCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    assert f"converted to ONNX by the first run, cached in {cache}" in r.stdout
    assert not cache.exists() and not (tmp_path / "out").exists()


def test_cache_rebuilt_for_a_new_converter_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = lite0.default_weights_path()
    sha = file_sha256(weights)
    path = lite0.ensure_onnx(weights, cache_dir=tmp_path, weights_sha=sha)
    assert lite0.cached_onnx(sha, tmp_path) == path
    monkeypatch.setattr(lite0, "CONVERTER_VERSION", lite0.CONVERTER_VERSION + 1)
    assert lite0.cached_onnx(sha, tmp_path) is None  # stale: the next run rebuilds it
    assert lite0.ensure_onnx(weights, cache_dir=tmp_path, weights_sha=sha) == path
    assert lite0.cached_onnx(sha, tmp_path) == path
