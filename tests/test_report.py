"""``ascend-batch report``: figures of a night, drift between nights (exit 9), the self-contained page
(checked as text and in headless Chromium), thumbnails through the bounded reader (a bomb is refused)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tarfile
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli, make_images, tiny_manifest

from ascend_batch.errors import EXIT_DRIFT, ImageError
from ascend_batch.report import js_divergence, psi
from ascend_batch.report.drift import PSI_FLOOR
from ascend_batch.report.thumbs import thumbnail
from ascend_batch.runner.writer import SCHEMA

SECTIONS = ("glance", "classes", "confidence", "uncertain", "errors", "evaluation", "drift")
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing resolves: a stray request cannot leave the machine
]


# -- fixtures -----------------------------------------------------------------------------------


def synthetic_night(out: Path, classes: dict[str, int], errors: int = 0, runs: int = 1) -> Path:
    """An output directory written directly in the real schema: ``classes`` label -> ok images (top-1
    probability 0.9, top-2 0.05), ``errors`` error rows of kind ``decode``."""
    out.mkdir(parents=True)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for label, n in classes.items():
        for i in range(n):
            rows.append(
                {
                    "image_id": f"{label}/{i}.jpg",
                    "source": "synthetic",
                    "unit": 0,
                    "status": "ok",
                    "error": None,
                    "width": 8,
                    "height": 8,
                    "top5_index": [0, 1],
                    "top5_label": [label, "other"],
                    "top5_prob": [0.9, 0.05],
                    "top1_label": label,
                    "top1_prob": 0.9,
                    "model": "m",
                    "backend": "b",
                    "device": "cpu:0",
                    "run_id": "r",
                    "processed_at": now,
                    "file_size": 100,
                    "file_mtime": now,
                }
            )
    for i in range(errors):
        rows.append(
            {
                **{k: None for k in SCHEMA.names},
                "image_id": f"bad/{i}.jpg",
                "source": "synthetic",
                "unit": 0,
                "status": "error",
                "error": "decode: broken",
                "top5_index": [],
                "top5_label": [],
                "top5_prob": [],
                "model": "m",
                "backend": "b",
                "device": "cpu:0",
                "run_id": "r",
                "processed_at": now,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "part-000000.parquet")
    n = len(rows)
    (out / "_job.json").write_text(json.dumps({"name": out.name, "n_items": n, "n_units": 1, "unit_size": n}))
    run = {"run_id": "r", "wall_seconds": 2.0, "images": n, "images_per_second": n / 2.0, "devices": ["cpu:0"]}
    summary = {"per_device_images": {"cpu:0": n}, "stage_seconds": {"infer": 1.0}}
    summary.update({"runs": [run] * runs} if runs > 1 else {"run": run})
    (out / "_summary.json").write_text(json.dumps(summary))
    return out


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (10 G by default) in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real job: 10 JPEGs in a folder, 3 in a tar, one text file named .jpg, one bomb PNG; evaluated."""
    tmp = tmp_path_factory.mktemp("reportjob")
    images = tmp / "images"
    make_images(images, 10)
    members = make_images(tmp / "for_tar", 3, seed=1, prefix="t")
    with tarfile.open(images / "pack.tar", "w") as tar:
        for p in members:
            tar.add(p, arcname=f"inner/{p.name}")
    (images / "broken.jpg").write_bytes(b"not an image at all")
    (images / "bomb.png").write_bytes(bomb_png())
    manifest = tiny_manifest(tmp, images, unit_size=4, extra_dataset='extensions = [".jpg", ".png", ".tar"]')
    r = cli("run", manifest)
    assert r.returncode == 0, r.stderr
    out = tmp / "out"
    labels = tmp / "labels.csv"
    labels.write_text("file,index\n" + "".join(f"img{i:05d}.jpg,{i % 3}\n" for i in range(10)))
    r = cli("evaluate", out, "--labels", labels)
    assert r.returncode == 0, r.stderr
    r = cli("report", out, "--baseline", out)
    assert r.returncode == 0, r.stderr
    return out


# -- drift --------------------------------------------------------------------------------------


def test_js_divergence_and_psi_by_hand() -> None:
    assert js_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert js_divergence([1, 0], [0, 1]) == 1.0  # nothing in common: the maximum, base 2
    p, q = [0.8, 0.2], [0.5, 0.5]
    m = [0.65, 0.35]
    want = 0.5 * (0.8 * math.log2(0.8 / 0.65) + 0.2 * math.log2(0.2 / 0.35)) + 0.5 * (
        0.5 * math.log2(0.5 / 0.65) + 0.5 * math.log2(0.5 / 0.35)
    )
    assert m == [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    assert js_divergence(p, q) == pytest.approx(want, abs=1e-12)
    assert psi(p, q) == pytest.approx(0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5), abs=1e-12)


def test_drift_between_two_nights_gives_the_expected_divergence_and_exit_code(tmp_path: Path) -> None:
    base = synthetic_night(tmp_path / "monday", {"cat": 50, "dog": 50}, errors=0)
    tonight = synthetic_night(tmp_path / "tuesday", {"cat": 80, "dog": 10, "fox": 10}, errors=10)
    # shares tonight P = (cat .8, dog .1, fox .1), baseline Q = (.5, .5, 0); M = (P + Q) / 2 = (.65, .3, .05)
    want_js = 0.5 * (0.8 * math.log2(0.8 / 0.65) + 0.1 * math.log2(0.1 / 0.3) + 0.1 * math.log2(0.1 / 0.05)) + 0.5 * (
        0.5 * math.log2(0.5 / 0.65) + 0.5 * math.log2(0.5 / 0.3)
    )
    want_psi = (
        (0.8 - 0.5) * math.log(0.8 / 0.5)
        + (0.1 - 0.5) * math.log(0.1 / 0.5)
        + (0.1 - PSI_FLOOR) * math.log(0.1 / PSI_FLOOR)
    )
    r = cli("report", tonight, "--baseline", base, "--json", "--fail-on-drift", "0.1")
    assert r.returncode == EXIT_DRIFT == 9, r.stderr
    assert "Jensen-Shannon divergence" in r.stderr and "--fail-on-drift" in r.stderr
    data = json.loads(r.stdout)
    (d,) = data["drift"]
    assert d["class_mix"]["js_divergence"] == pytest.approx(want_js, abs=1e-6)
    assert d["class_mix"]["psi"] == pytest.approx(want_psi, abs=1e-5)
    assert d["class_mix"]["new_classes"] == ["fox"] and d["class_mix"]["vanished_classes"] == []
    assert d["error_rate"] == {
        "baseline": 0.0,
        "tonight": pytest.approx(10 / 110, abs=1e-6),
        "change": pytest.approx(10 / 110, abs=1e-6),
    }
    shares = {c["class"]: (c["baseline"], c["tonight"]) for c in d["class_mix"]["share_changes"]}
    assert shares == {"cat": (0.5, 0.8), "dog": (0.5, 0.1), "fox": (0.0, 0.1)}
    assert d["confidence"]["mean_baseline"] == d["confidence"]["mean_tonight"] == pytest.approx(0.9, abs=1e-6)
    # the report is written even when the gate fails; under the threshold it passes
    assert (tonight / "_report.html").exists() and (tonight / "_report.json").exists()
    r = cli("report", tonight, "--baseline", base, "--fail-on-drift", f"{want_js + 0.01:.4f}")
    assert r.returncode == 0, r.stderr
    assert f"JS {want_js:.4f}" in r.stdout
    # the other way round: fox vanished
    r = cli("report", base, "--baseline", tonight, "--json")
    assert json.loads(r.stdout)["drift"][0]["class_mix"]["vanished_classes"] == ["fox"]


def test_identical_nights_have_zero_drift(tmp_path: Path) -> None:
    a = synthetic_night(tmp_path / "a", {"cat": 7, "dog": 3, "eel": 1}, errors=2)
    b = synthetic_night(tmp_path / "b", {"cat": 7, "dog": 3, "eel": 1}, errors=2)
    r = cli("report", a, "--baseline", b, "--baseline", a, "--json", "--fail-on-drift", "0")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["class_mix"]["js_divergence"] for d in data["drift"]] == [0.0, 0.0]
    assert [d["class_mix"]["psi"] for d in data["drift"]] == [0.0, 0.0]
    assert [d["error_rate"]["change"] for d in data["drift"]] == [0.0, 0.0]
    assert data["max_js_divergence"] == 0.0


def test_summary_with_several_runs_and_a_folder_that_is_no_job(tmp_path: Path) -> None:
    out = synthetic_night(tmp_path / "n", {"cat": 4}, runs=3)
    r = cli("report", out, "--json")
    g = json.loads(r.stdout)["glance"]
    assert len(g["runs"]) == 3 and g["wall_seconds"] == 6.0 and g["images_per_second"] == 2.0
    r = cli("report", tmp_path)
    assert r.returncode == 4 and "no _job.json" in r.stderr


# -- the page and the JSON of a real job ----------------------------------------------------------


def assert_self_contained(page: str) -> None:
    assert not re.search(r"(?i)https?:|ftp:|wss?:", page), "a network URL in the page"
    assert not re.search(r"(?i)<script|<link|<iframe|<object|<embed|@import|url\(", page)
    for attr in re.findall(r'(?i)\s(?:src|href|srcset|action|poster)\s*=\s*"([^"]*)"', page):
        assert attr.startswith("data:image/"), f"a non-inline resource: {attr[:80]}"


def test_page_is_self_contained_and_its_numbers_match_the_output(job: Path) -> None:
    page = (job / "_report.html").read_text("utf-8")
    data = json.loads((job / "_report.json").read_text("utf-8"))
    assert_self_contained(page)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert len(page) < 3_000_000

    df = pd.read_parquet(job)  # the report files start with "_": the dataset is results only
    ok = df[df.status == "ok"]
    assert data["images"] == {"listed": 15, "processed": len(df), "ok": len(ok), "error": len(df) - len(ok)}
    assert len(df) == 15 and len(ok) == 13
    kinds = Counter(e.split(":", 1)[0] for e in df.error.dropna())
    assert {e["kind"]: e["count"] for e in data["errors_by_kind"]} == dict(kinds) == {"format": 1, "too-large": 1}
    assert {c["class"]: c["images"] for c in data["classes"]["top"]} == dict(Counter(ok.top1_label))
    assert sum(data["confidence"]["histogram"]) == len(ok)
    assert data["confidence"]["mean"] == pytest.approx(ok.top1_prob.mean(), abs=1e-5)
    margins = sorted(p[0] - p[1] for p in ok.top5_prob)
    assert [u["margin"] for u in data["least_confident"]] == pytest.approx(margins, abs=1e-5)
    assert data["evaluation"]["top1"] == json.loads((job / "_evaluation.json").read_text())["top1"]
    assert sum(c["images"] for c in data["evaluation"]["per_class"]) == 10
    assert data["drift"][0]["class_mix"]["js_divergence"] == 0.0

    # thumbnails: folder files and tar members decode; the bomb and the text file get none
    thumbs = {u["image_id"]: u["thumbnail"] for u in data["least_confident"]}
    assert all(thumbs.values()) and any("pack.tar::" in i for i in thumbs)
    examples = {x["image_id"]: x["thumbnail"] for e in data["errors_by_kind"] for x in e["examples"]}
    assert examples == {"broken.jpg": False, "bomb.png": False}
    assert "too-large" in data["thumbnails"]["refused"]["bomb.png"]
    assert page.count('src="data:image/jpeg;base64,') == data["thumbnails"]["shown"] == 13

    # the page shows the JSON's figures
    assert f'<b data-figure="images">{len(df)}</b>' in page
    assert f'<b data-figure="ok">{len(ok)}</b>' in page
    assert f'<b data-figure="errors">{len(df) - len(ok)}</b>' in page
    assert f'<b data-figure="mean-confidence">{data["confidence"]["mean"]:.4f}</b>' in page
    assert f'<b data-figure="top1">{data["evaluation"]["top1"]:.4f}</b>' in page


def test_a_thumbnail_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError) as info:
        thumbnail(bomb_png())
    assert info.value.kind == "too-large"
    with pytest.raises(ImageError) as info:
        thumbnail(bomb_png(2000, 2000), max_pixels=1000 * 1000)
    assert info.value.kind == "too-large"
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (640, 320), "red").save(buf, "PNG")
    small = Image.open(io.BytesIO(thumbnail(buf.getvalue())))
    assert small.format == "JPEG" and max(small.size) == 96


# -- in a real browser ----------------------------------------------------------------------------


def need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI=true but no chromium on PATH: apt-get install -y --no-install-recommends chromium")
        pytest.skip("no chromium on PATH (Debian: apt-get install -y --no-install-recommends chromium)")
    return CHROMIUM


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked for (Chromium's net log; the browser's own background requests, which carry
    no file:// network isolation key, are left out)."""
    text = netlog.read_text("utf-8", errors="replace").rstrip().rstrip(",")
    try:
        events = json.loads(text)["events"]
    except (ValueError, KeyError):
        events = json.loads(text + "]}")["events"]  # a log cut short at exit
    urls = []
    for e in events:
        params = e.get("params") or {}
        url = params.get("url")
        if url and "file://" in str(params.get("network_isolation_key", "")) and not url.startswith(("file:", "data:")):
            urls.append(url)
    return urls


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = need_chromium()
    return subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp / 'profile'}",
            f"--log-net-log={tmp / 'net.json'}",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_page_in_headless_chromium(job: Path, tmp_path: Path) -> None:
    r = chromium(job / "_report.html", tmp_path, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    data = json.loads((job / "_report.json").read_text("utf-8"))
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert f'<b data-figure="images">{data["images"]["processed"]}</b>' in dom
    assert f'<b data-figure="errors">{data["images"]["error"]}</b>' in dom
    assert f'<b data-figure="mean-confidence">{data["confidence"]["mean"]:.4f}</b>' in dom
    assert dom.count("<svg") >= 3  # class bars, confidence, the baseline's confidence
    assert_self_contained(dom)
    assert page_requests(tmp_path / "net.json") == []

    shot = tmp_path / "report.png"
    r = chromium(job / "_report.html", tmp_path / "shot", f"--screenshot={shot}", "--window-size=1200,2000")
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_network_check_catches_a_page_that_fetches(tmp_path: Path) -> None:
    """The negative control of the check above: a page with an external image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://example.invalid/x.png"><p>x</p></body></html>')
    r = chromium(page, tmp_path, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert page_requests(tmp_path / "net.json") == ["http://example.invalid/x.png"] or any(
        "example.invalid" in u for u in page_requests(tmp_path / "net.json")
    )


def test_thumbnails_keep_the_jobs_own_pixel_limit(tmp_path: Path) -> None:
    # dataset.max_pixels is recorded in _job.json: the report decodes nothing the job refused to
    images = tmp_path / "images"
    make_images(images, 3)
    manifest = tiny_manifest(tmp_path, images, extra_dataset="max_pixels = 100")
    r = cli("run", manifest, "--max-error-fraction", "1")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = cli("report", out, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "_report.json").read_text("utf-8"))
    refused = data["thumbnails"]["refused"]
    assert data["thumbnails"]["shown"] == 0 and len(refused) == 3
    assert all("limit of 100" in why for why in refused.values()), refused
