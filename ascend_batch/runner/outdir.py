"""The one owner of the output directory: every file name in it, the commit of a unit's part (and of
the pieces of a unit being bisected, and their merge), crash rows, verification of committed parts,
clearing of leftovers, and ``--restart``. No other module spells a file name of the output directory.

Layout (everything that is not a result starts with ``_`` or ``.``, so ``pandas.read_parquet(out)``
reads results only)::

    part-000042.parquet        one unit's rows (the checkpoint), committed atomically, never rewritten
    _commits/part-000042.json  what was committed: rows, bytes, sha256 (a resume checks it cheaply)
    _damaged/                  parts that failed verification, moved aside for inspection
    _pieces/                   pieces of a unit being bisected (merged into its part, then removed)
    _runs/<run_id>.json        one record per run or resume: its figures and outcome (never rewritten by others)
    _job.json _listing.parquet _summary.json _SUCCESS _evaluation.json .lock* .tmp-*
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_create, temp_owner, write_text
from ..errors import IncompatibleOutputError
from ..plan import Unit, read_unit_items, unit_ids
from .writer import STATS_KEY, RowBuffer, part_stats, sum_into

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
SUCCESS_FILE = "_SUCCESS"
LISTING_FILE = "_listing.parquet"
EVALUATION_FILE = "_evaluation.json"
REPORT_HTML, REPORT_JSON = "_report.html", "_report.json"  # ascend-batch report
PIECES_DIR = "_pieces"
COMMITS_DIR = "_commits"
DAMAGED_DIR = "_damaged"
RUNS_DIR = "_runs"  # one record per run or resume (its figures and outcome), gathered into _summary.json
SLURM_DIR = "_slurm"  # the Slurm scripts and logs of the job (kept by --restart: an array may be running)
LOCK_PREFIX = ".lock"
PART_RE = re.compile(r"^part-(\d+)\.parquet$")
STALE_FOREIGN_TEMP_SECONDS = 24 * 3600  # temp files of other hosts: removed once this old

# what this tool writes at the top of an output directory (besides parts and temp files)
OWN_FILES = (JOB_FILE, SUMMARY_FILE, SUCCESS_FILE, LISTING_FILE, EVALUATION_FILE, REPORT_HTML, REPORT_JSON)
OWN_DIRS = (PIECES_DIR, COMMITS_DIR, DAMAGED_DIR, RUNS_DIR)


def part_name(unit: int) -> str:
    return f"part-{unit:06d}.parquet"


def piece_name(unit: int, start: int, stop: int) -> str:
    return f"u{unit:06d}-{start:012d}-{stop:012d}.parquet"


def lock_name(shard: tuple[int, int] | None) -> str:
    return LOCK_PREFIX + (f"-shard-{shard[0]}-of-{shard[1]}" if shard else "")


def part_files(out: Path) -> list[Path]:
    try:
        return sorted(out / n for n in os.listdir(out) if PART_RE.match(n))
    except FileNotFoundError:
        return []


def committed_units(out: Path) -> set[int]:
    """Units whose part file exists: the checkpoint."""
    return {int(m.group(1)) for p in part_files(out) if (m := PART_RE.match(p.name))}


# -- commit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitRecord:
    """What a part held when it was committed; a resume compares the file against it."""

    rows: int
    bytes: int
    sha256: str


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _write_table(path: Path, table: pa.Table, stats: dict | None) -> bool:
    if stats is not None:
        meta = dict(table.schema.metadata or {})
        meta[STATS_KEY] = json.dumps(stats).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_create(path, exclusive=True) as (f, result):
        pq.write_table(table, f, compression="zstd", write_page_checksum=True)
    return result.created


def _record_path(out: Path, unit: int) -> Path:
    return out / COMMITS_DIR / f"{part_name(unit)}.json"


def _write_record(out: Path, unit: int, rows: int, sized: tuple[int, str] | None = None) -> None:
    """Record the committed part of ``unit``; ``sized`` is its (bytes, sha256) when already known."""
    size, digest = sized or _sha256(out / part_name(unit))
    (out / COMMITS_DIR).mkdir(exist_ok=True)
    write_text(_record_path(out, unit), json.dumps(asdict(CommitRecord(rows, size, digest))))


def commit_part(out: Path, unit: int, table: pa.Table, stats: dict | None = None) -> bool:
    """Make ``table`` unit ``unit``'s part, atomically; False if that unit was already committed.
    Written with page checksums; its commit record follows (a part without one is verified in full)."""
    if not _write_table(out / part_name(unit), table, stats):
        return False
    _write_record(out, unit, table.num_rows)
    return True


def commit_piece(out: Path, unit: int, start: int, stop: int, table: pa.Table, stats: dict | None = None) -> None:
    """Rows of the slice ``[start, stop)`` of a unit being bisected (merged by :func:`merge_pieces`)."""
    (out / PIECES_DIR).mkdir(exist_ok=True)
    _write_table(out / PIECES_DIR / piece_name(unit, start, stop), table, stats)


def write_crash_row(
    out: Path, listing: Path, unit: Unit, pos: int, message: str, *, model: str, backend: str, device: str, run_id: str
) -> None:
    """The error row of the image at listing position ``pos`` that kept killing workers, as a piece."""
    (item,) = read_unit_items(pq.ParquetFile(listing), unit, pos, pos + 1)
    rows = RowBuffer(model, backend, device, run_id)
    rows.add_error(item.id, item.source, unit.index, int(time.time() * 1000), item.size, item.mtime, message)
    stats = {"images": 1, "ok": 0, "errors": 1, "error_kinds": {message.split(":", 1)[0]: 1}, "seconds": {}}
    commit_piece(out, unit.index, pos, pos + 1, rows.table(), stats)


def _cover(unit: Unit, files: list[Path]) -> list[Path]:
    """The pieces that hold each image of ``unit`` exactly once, in listing order. A piece committed by a
    worker that died before reporting it overlaps the halves its task was split into: either serves, so
    the larger is kept. Raises ``ValueError`` if some image has no piece (a bug: never merge a gap)."""
    ranges = []
    for p in files:
        _, first, last = p.stem.split("-")
        ranges.append((int(first), -int(last), p))
    chosen: list[Path] = []
    cursor = unit.start
    for start, neg_stop, p in sorted(ranges):
        if start == cursor:
            chosen.append(p)
            cursor = -neg_stop
    if cursor != unit.stop:
        raise ValueError(f"unit {unit.index}: its pieces cover [{unit.start}, {cursor}) of [{unit.start}, {unit.stop})")
    return chosen


def merge_pieces(out: Path, unit: Unit) -> bool:
    """Merge a bisected unit's pieces into its part (listing order, each image once), then drop them."""
    files = sorted((out / PIECES_DIR).glob(f"u{unit.index:06d}-*.parquet"))
    tables = [pq.read_table(p) for p in _cover(unit, files)]
    stats: dict = {"images": 0, "ok": 0, "errors": 0, "error_kinds": {}, "seconds": {}, "decoded": {}, "bisected": True}
    for t in tables:
        part = part_stats(t)
        for k in ("images", "ok", "errors"):
            stats[k] += part.get(k, 0)
        sum_into(stats["error_kinds"], part.get("error_kinds", {}))
        sum_into(stats["seconds"], part.get("seconds", {}))
        sum_into(stats["decoded"], part.get("decoded", {}))
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    committed = commit_part(out, unit.index, table, stats)
    for p in files:
        p.unlink(missing_ok=True)
    return committed


def clear_pieces(out: Path, units: list[Unit]) -> None:
    """Drop leftover pieces of uncommitted units (a bisection interrupted by a crash restarts)."""
    pieces = out / PIECES_DIR
    if pieces.exists():
        wanted = {f"u{u.index:06d}" for u in units}
        for p in pieces.iterdir():
            if p.name.split("-", 1)[0] in wanted:  # u<unit>-<start>-<stop>.parquet, any number of digits
                p.unlink(missing_ok=True)


# -- verification ------------------------------------------------------------------------------


def check_part(out: Path, unit: Unit, listing: pq.ParquetFile | None = None) -> str | None:
    """What is wrong with ``unit``'s committed part, or None. Without ``listing`` the check is cheap
    (size and sha256 against the commit record); a part without a record, or with ``listing``, is read
    in full: every page (checksums), one row per listed image, in listing order (the job's own
    listing snapshot is opened for a part without a record)."""
    path = out / part_name(unit.index)
    record = None
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
        record = CommitRecord(**json.loads(_record_path(out, unit.index).read_text("utf-8")))
    if record is None and listing is None:  # nothing vouches for it: check its ids too
        listing = pq.ParquetFile(out / LISTING_FILE)
    try:
        if record is not None and listing is None:
            size, digest = _sha256(path)  # the cheap check: no need to hold the file
        else:
            data = path.read_bytes()  # read once: hashed, then parsed from memory
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        if record is not None:
            if size != record.bytes:
                return f"{size} bytes, {record.bytes} were committed"
            if digest != record.sha256:
                return "its content changed after the commit (sha256 differs)"
            if listing is None:
                return None
        # every page of every column
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"unreadable: {exc}"
    ids = unit_ids(listing, unit) if listing is not None else None
    if table.num_rows != unit.size:
        return f"{table.num_rows} rows for {unit.size} listed images"
    if ids is not None and table["image_id"].to_pylist() != ids:
        return "its image ids differ from the unit's listing"
    if not set(table["status"].to_pylist()) <= {"ok", "error"}:
        return "a status other than 'ok' or 'error'"
    if record is None:  # verified: a resume can check it cheaply from now on
        _write_record(out, unit.index, table.num_rows, (size, digest))
    return None


def quarantine(out: Path, unit: int, reason: str) -> Path:
    """Move a damaged part aside (kept for inspection, with why) so its unit is redone."""
    damaged = out / DAMAGED_DIR
    damaged.mkdir(exist_ok=True)
    dest = damaged / f"{part_name(unit)}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(out / part_name(unit), dest)
    _record_path(out, unit).unlink(missing_ok=True)
    write_text(dest.with_name(dest.name + ".why.txt"), reason + "\n")
    return dest


def set_aside_damaged(out: Path, units: list[Unit], listing: pq.ParquetFile | None = None) -> dict[int, str]:
    """Check the committed parts of ``units`` (cheaply, or in full with ``listing``); damaged ones are
    moved to ``_damaged/``. Returns {unit: problem}."""
    done = committed_units(out)
    problems: dict[int, str] = {}
    for u in units:
        if u.index in done and (problem := check_part(out, u, listing)) is not None:
            quarantine(out, u.index, problem)
            problems[u.index] = problem
    return problems


# -- clearing, restart --------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temps(out: Path) -> list[Path]:
    """Remove temp files left by killed writers: those of this host whose process is gone, and those
    of other hosts older than a day. A live writer's temp file is never touched."""
    removed = []
    here = socket.gethostname()
    now = time.time()
    for folder in (out, out / PIECES_DIR, out / COMMITS_DIR):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                owner = temp_owner(entry.name)
                if owner is None:
                    continue
                host, pid = owner
                with contextlib.suppress(FileNotFoundError):
                    stale = (
                        not _pid_alive(pid)
                        if host == here
                        else now - entry.stat().st_mtime > STALE_FOREIGN_TEMP_SECONDS
                    )
                    if stale:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
    return removed


def _ours(name: str, with_job_file: bool) -> bool:
    if name.startswith(LOCK_PREFIX) or temp_owner(name) is not None or name in OWN_FILES or name in OWN_DIRS:
        return True
    return with_job_file and PART_RE.match(name) is not None


def stray_data(out: Path, n_units: int) -> list[str]:
    """Entries of a job's output that Parquet readers (pandas, pyarrow, DuckDB, Spark) would read as
    rows but that are not the job's parts: every name that starts with neither ``_`` nor ``.`` (the
    prefixes those readers skip), other than ``part-NNNNNN.parquet`` of one of the ``n_units`` units.
    A copied part or a stray file would give its images a second row."""
    try:
        names = sorted(os.listdir(out))
    except FileNotFoundError:
        return []
    stray = []
    for name in names:
        if name.startswith(("_", ".")) or temp_owner(name) is not None:
            continue
        m = PART_RE.match(name)
        if m is not None and int(m.group(1)) < n_units and name == part_name(int(m.group(1))):
            continue
        stray.append(name)
    return stray


def refuse_stray_data(out: Path, n_units: int) -> None:
    """Exit 4 when the output holds data files that are not this job's parts (see :func:`stray_data`)."""
    stray = stray_data(out, n_units)
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise IncompatibleOutputError(
            f"{out} holds files that are not this job's parts: {shown}. Readers of the results (pandas, "
            "pyarrow) would take them as rows, so the job cannot be complete: move them out of the "
            "output directory and rerun (or finalize)"
        )


def foreign_entries(out: Path) -> list[str]:
    """Entries of ``out`` this tool did not write (hidden dot-files aside: never ours to delete, never
    in the way). Without a ``_job.json``, part files are not provably ours either (another tool's
    dataset, a user's file of the same name)."""
    has_job = (out / JOB_FILE).is_file()
    try:
        names = sorted(os.listdir(out))
    except FileNotFoundError:
        return []
    return [n for n in names if not (n.startswith(".") or n == SLURM_DIR or _ours(n, has_job))]


def restart(out: Path) -> None:
    """Delete what this tool wrote in ``out`` (results included), after checking that the directory
    is an ascend-batch output: anything it did not write makes it refuse, deleting nothing."""
    if not out.exists():
        return
    strangers = foreign_entries(out)
    if strangers:
        shown = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
        raise IncompatibleOutputError(
            f"--restart refused: {out} is not (only) an ascend-batch output directory; it holds {shown}. "
            "Nothing was deleted; choose another job.output"
        )
    for entry in out.iterdir():
        if entry.name.startswith(LOCK_PREFIX):
            continue  # held by this run
        if entry.is_dir() and entry.name in OWN_DIRS:
            shutil.rmtree(entry)
        elif entry.is_file() and _ours(entry.name, True):
            entry.unlink(missing_ok=True)
