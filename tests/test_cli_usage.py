"""Every command of the CLI, through the real CLI in a subprocess, given what a user gets wrong: unknown
options, missing arguments, paths that do not exist or are the wrong kind, directories that are not job
outputs, negative or malformed numbers. None may print a traceback or "internal error"; each exits with a
documented code other than 1 and names the option, key or path.

The commands are enumerated from the typer app, and the cases are made from each command's parameters
(their names and types), so a new command or option is covered without touching this file. Policy the
generated cases hold every command to: every number on the command line is a count, size, fraction or
duration (a negative one is a usage error); ``-h`` is ``--help``; every help ends with an example and
shows flags as flags.

Also here: the help conventions, exit 4's key-by-key message, the main-guard sentence for scripts,
``run --json`` and ``slurm submit --dry-run --json`` with its warnings."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, make_images, tiny_manifest, tiny_onnx
from typer.main import get_command

from ascend_batch import __version__, errors
from ascend_batch.cli import app, exit_codes

EXIT_CODES = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
DOCUMENTED_FAILURES = EXIT_CODES - {errors.EXIT_OK, errors.EXIT_INTERNAL}


# -- the commands, from the app ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "argument" | "option"
    opt: str  # the option's long name, or the argument's name in capitals
    required: bool
    flag: bool
    base: type  # Path, int, float, str, bool (a list's element type)
    multiple: bool


def _base_type(annotation: Any) -> tuple[type, bool]:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        return _base_type(args[0])[0], True
    if args and typing.get_origin(annotation) is not None:  # X | None
        return _base_type(args[0])
    return (annotation if isinstance(annotation, type) else str), False


def leaf_commands() -> dict[tuple[str, ...], list[Param]]:
    """Every command that runs something (``slurm submit``, not ``slurm``), with its parameters."""
    found: dict[tuple[str, ...], list[Param]] = {}

    def walk(group: Any, path: tuple[str, ...]) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, (*path, name))
                continue
            fn = inspect.unwrap(cmd.callback)
            hints = typing.get_type_hints(fn, include_extras=True)
            params = []
            for p in cmd.params:
                base, multiple = _base_type(hints.get(p.name, str))
                is_argument = p.param_type_name == "argument"
                params.append(
                    Param(
                        name=p.name,
                        kind=p.param_type_name,
                        opt=p.name.upper() if is_argument else max(p.opts, key=len),
                        required=bool(p.required),
                        flag=bool(getattr(p, "is_flag", False)),
                        base=base,
                        multiple=multiple,
                    )
                )
            found[(*path, name)] = params

    walk(get_command(app), ())
    return found


COMMANDS = leaf_commands()
GROUPS = sorted({path[:i] for path in COMMANDS for i in range(1, len(path))})


# -- a workspace: a manifest, a finished job, and wrong things ---------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("usage")
    make_images(tmp / "imgs", 5)
    manifest = tiny_manifest(tmp, tmp / "imgs")
    r = cli("run", manifest, "--no-progress")
    assert r.returncode == 0, r.stderr
    (tmp / "labels.csv").write_text("file,index\nimg00000.jpg,1\nimg00001.jpg,2\n")
    (tmp / "empty").mkdir()
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "precious.csv").write_text("a,b\n1,2\n")
    (tmp / "plain.txt").write_text("just a file\n")
    return {
        "tmp": str(tmp),
        "manifest": str(manifest),
        "out": str(tmp / "out"),
        "images": str(tmp / "imgs"),
        "labels": str(tmp / "labels.csv"),
        "model": str(tmp / "tiny.onnx"),
        "missing": str(tmp / "no-such-thing"),
        "empty": str(tmp / "empty"),
        "foreign": str(tmp / "foreign"),
        "plain": str(tmp / "plain.txt"),
        "under_file": str(tmp / "plain.txt" / "sub"),
    }


# a good value for a required parameter, by name (else by type: see good_value)
GOOD = {"manifest": "{manifest}", "out": "{out}", "images": "{images}", "labels": "{labels}", "array": "2"}
# options that keep a command's good invocation cheap and side-effect free
SAFE = {
    ("slurm", "submit"): ["--dry-run"],
    ("bench",): ["--model-path", "{model}", "--repeats", "1", "--no-chart", "--json", "{tmp}/bench.json"],
}


def good_value(p: Param) -> str:
    if p.name in GOOD:
        return GOOD[p.name]
    return {Path: "{out}", int: "1", float: "0.5"}.get(p.base, "x")


def invocation(path: tuple[str, ...], params: list[Param], **override: str) -> list[str]:
    """The command with good values for its required parameters (and ``override``), plus its SAFE options."""
    args: list[str] = [*path]
    options: list[str] = []
    for p in params:
        if p.name in override:
            value = override[p.name]
        elif p.required:
            value = good_value(p)
        else:
            continue
        if p.kind == "argument":
            args.append(value)
        else:
            options += [p.opt, value]
    safe = list(SAFE.get(path, []))
    for p in params:  # an overridden option replaces its SAFE value
        if p.kind == "option" and p.name in override and p.opt in safe:
            i = safe.index(p.opt)
            del safe[i : i + 2]
    return args + options + safe


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: frozenset[int] = frozenset(DOCUMENTED_FAILURES)
    mentions: tuple[str, ...] = ()  # at least one of these is in the output
    env: tuple[tuple[str, str], ...] = ()


def _cases() -> list[Case]:
    cases: list[Case] = []
    for path, params in COMMANDS.items():
        name = " ".join(path)
        base = invocation(path, params)
        usage = frozenset({errors.EXIT_USAGE})
        cases.append(Case(f"{name}: unknown option", (*base, "--no-such-option"), usage, ("--no-such-option",)))
        cases.append(Case(f"{name}: extra argument", (*base, "extra-argument"), usage, ("extra-argument",)))
        if any(p.required for p in params):
            cases.append(Case(f"{name}: nothing given", path, frozenset({2}), ("Missing",)))
        for p in params:
            if p.flag:
                continue
            if p.base is Path and p.kind == "argument":
                for bad in ("missing", "empty", "foreign", "plain", "under_file"):
                    args = invocation(path, params, **{p.name: f"{{{bad}}}"})
                    cases.append(Case(f"{name}: {p.opt} {bad}", tuple(args), mentions=(p.opt, f"{{{bad}}}")))
            elif p.base is Path:  # an option: input or output, a path under a file is wrong for both
                args = invocation(path, params, **{p.name: "{under_file}"})
                cases.append(Case(f"{name}: {p.opt} under a file", tuple(args), mentions=(p.opt, "{plain}")))
            elif p.base in (int, float):
                for bad in ("-1", "abc"):
                    args = invocation(path, params, **{p.name: bad})
                    cases.append(Case(f"{name}: {p.opt} {bad}", tuple(args), frozenset({2}), (p.opt,)))
    for group in GROUPS:
        cases.append(Case(f"{' '.join(group)}: unknown option", (*group, "--no-such-option"), frozenset({2})))
        cases.append(Case(f"{' '.join(group)}: unknown command", (*group, "no-such-command"), frozenset({2})))
    cases.append(Case("unknown command", ("no-such-command",), frozenset({2}), ("no-such-command",)))
    return cases + NAMED


NAMED = [  # the cases the issue names, and their relatives
    Case("run --shard 2/2", ("run", "{manifest}", "--shard", "2/2"), frozenset({2}), ("--shard",)),
    Case("run --shard x", ("run", "{manifest}", "--shard", "x"), frozenset({2}), ("--shard",)),
    Case("run --shard -1/2", ("run", "{manifest}", "--shard", "-1/2"), frozenset({2}), ("--shard",)),
    Case("run --shard 1/0", ("run", "{manifest}", "--shard", "1/0"), frozenset({2}), ("--shard",)),
    Case(
        "run in a Slurm array with a bad task id",
        ("run", "{manifest}"),
        frozenset({2}),
        ("SLURM_ARRAY_TASK_ID",),
        env=(("SLURM_ARRAY_TASK_ID", "abc"),),
    ),
    Case(
        "run in a Slurm array task outside ASCEND_BATCH_SHARDS",
        ("run", "{manifest}"),
        frozenset({2}),
        ("ASCEND_BATCH_SHARDS",),
        env=(("SLURM_ARRAY_TASK_ID", "5"), ("ASCEND_BATCH_SHARDS", "2")),
    ),
    Case("run --devices foo", ("run", "{manifest}", "--devices", "foo"), frozenset({2}), ("runtime.devices",)),
    Case("run -o a file", ("run", "{manifest}", "-o", "{plain}"), frozenset({8}), ("{plain}",)),
    Case("run --max-error-fraction 2", ("run", "{manifest}", "--max-error-fraction", "2"), frozenset({2})),
    Case(
        "evaluate --labels missing.csv",
        ("evaluate", "{out}", "--labels", "{tmp}/missing.csv"),
        frozenset({2}),
        ("--labels",),
    ),
    Case("evaluate a missing folder", ("evaluate", "{missing}", "--labels", "{labels}"), mentions=("{missing}",)),
    Case(
        "evaluate a folder that is not a job output",
        ("evaluate", "{foreign}", "--labels", "{labels}"),
        frozenset({2, 4}),
        ("{foreign}",),
    ),
    Case("status a folder that is not a job output", ("status", "{foreign}"), frozenset({2, 4}), ("{foreign}",)),
    Case("finalize an empty folder", ("finalize", "{empty}"), frozenset({2, 4}), ("{empty}",)),
    Case("slurm submit --array 0", ("slurm", "submit", "{manifest}", "--array", "0"), frozenset({2}), ("--array",)),
    Case("bench --scaling a,b", ("bench", "{images}", "--scaling", "a,b"), frozenset({2}), ("--scaling",)),
]
# generated cases whose expectation differs, and why
ALSO_OK = {  # exit 0 is right here
    "status: OUT missing": "status of a job that has not started yet reports 'not started'",
    "status: OUT empty": "status of a job that has not started yet reports 'not started'",
}
KNOWN: dict[str, str] = {}  # cases known to fail, with the reason (none today)
CASES = [dataclasses.replace(c, expect=c.expect | {errors.EXIT_OK}) if c.id in ALSO_OK else c for c in _cases()]
PARAMS = [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=KNOWN[c.id], strict=False)] if c.id in KNOWN else [])
    for c in CASES
]


def _fill(text: str, ws: dict[str, str]) -> str:
    return text.format(**ws)


def _assert_clean(r: subprocess.CompletedProcess, expect: frozenset[int], mentions: list[str]) -> None:
    said = r.stdout + r.stderr
    assert "Traceback" not in said and "internal error" not in said, said
    assert r.returncode != errors.EXIT_INTERNAL, said
    assert r.returncode in expect, (r.returncode, said)
    if mentions:
        assert any(m in said for m in mentions), (mentions, said)


@pytest.mark.parametrize("case", PARAMS)
def test_user_mistakes_exit_with_documented_codes(case: Case, ws: dict[str, str]) -> None:
    args = [_fill(a, ws) for a in case.args]
    env = {k: v for k, v in case.env}
    r = cli(*args, env=env, cwd=ws["tmp"], timeout=120)
    mentions = [_fill(m, ws) for m in case.mentions]
    mentions += [Path(m).name for m in mentions if "/" in m]  # a path may be shown relative or resolved
    _assert_clean(r, case.expect, mentions)


def test_every_command_is_enumerated() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"run", "validate", "status", "evaluate", "finalize", "demo", "bench", "version", "slurm submit"} <= names
    covered = {c.id.split(":")[0] for c in CASES}
    assert names <= covered


# -- help conventions ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*COMMANDS, *GROUPS], ids=[" ".join(p) for p in [*COMMANDS, *GROUPS]])
def test_help_conventions(path: tuple[str, ...]) -> None:
    short = cli(*path, "-h")
    assert short.returncode == 0, short.stderr
    assert short.stdout == cli(*path, "--help").stdout
    text = short.stdout
    assert "-h, --help" in text
    assert "Example:" in text and "ascend-batch " + " ".join(path) in text.split("Example:")[1]
    assert "<bool>" not in text and "<boolean>" not in text  # flags are shown as flags
    for p in COMMANDS.get(path, []):
        if p.flag:
            shown = re.compile(rf"(^|[\s,/]){re.escape(p.opt)}(?=[\s,/]|$)")
            line = next(line for line in text.splitlines() if shown.search(line))
            assert "<" not in shown.split(line, 1)[-1].split("  ")[0], line


def test_main_help_lists_every_exit_code_and_version() -> None:
    r = cli("-h")
    assert r.returncode == 0
    section = r.stdout.split("Exit codes:", 1)[1]
    listed = {int(line.split()[0]) for line in section.splitlines() if line.strip()[:1].isdigit()}
    assert listed == EXIT_CODES == set(exit_codes())
    assert "--version" in r.stdout
    v = cli("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"ascend-batch {__version__}"


# -- exit 4 says what changed ----------------------------------------------------------------------


def _job(tmp: Path) -> Path:
    make_images(tmp / "imgs", 6)
    m = tiny_manifest(tmp, tmp / "imgs", unit_size=3)
    m.write_text(m.read_text().replace("std = 64.0", 'std = 64.0\ninterpolation = "bilinear"'))
    r = cli("run", m, "--no-progress")
    assert r.returncode == 0, r.stderr
    return m


def test_exit_4_names_each_changed_key(tmp_path: Path) -> None:
    m = _job(tmp_path)
    job = json.loads((tmp_path / "out" / "_job.json").read_text())
    old_identity = job["model_identity"]
    # runtime knobs are not the job: a different batch size resumes (as strict as before, no stricter)
    m.write_text(m.read_text().replace("batch_size = 4", "batch_size = 2"))
    assert cli("run", m, "--no-progress").returncode == 0
    text = m.read_text().replace('interpolation = "bilinear"', 'interpolation = "bicubic"')
    m.write_text(text.replace("unit_size = 3", "unit_size = 2"))
    tiny_onnx(tmp_path / "tiny.onnx", seed=7)  # other weights in the same file
    r = cli("run", m, "--no-progress")
    assert r.returncode == 4, r.stderr
    assert "model.interpolation: bilinear → bicubic" in r.stderr
    assert "runtime.unit_size: 3 → 2" in r.stderr
    model_line = next(line for line in r.stderr.splitlines() if "the model file" in line)
    assert old_identity in model_line and "→" in model_line
    assert "preprocessing.interpolation" not in r.stderr  # said once, by its manifest key
    assert "{" not in r.stderr and "fingerprint" not in r.stderr  # no dictionaries, no hashes
    assert "--restart" in r.stderr and "Traceback" not in r.stderr


def test_exit_4_for_an_output_without_recorded_tables(tmp_path: Path) -> None:
    m = _job(tmp_path)
    job_file = tmp_path / "out" / "_job.json"
    job = json.loads(job_file.read_text())
    job.pop("tables")  # as written before the tables were recorded
    job_file.write_text(json.dumps(job))
    assert cli("run", m, "--no-progress").returncode == 0  # still resumes
    m.write_text(m.read_text().replace('"bilinear"', '"bicubic"'))
    r = cli("run", m, "--no-progress")
    assert r.returncode == 4, r.stderr
    assert "[dataset]/[model] tables" in r.stderr and job["fingerprint"] in r.stderr
    assert "the model's preprocessing.interpolation: bilinear → bicubic" in r.stderr


def test_recorded_tables_are_what_the_fingerprint_hashes(tmp_path: Path) -> None:
    import hashlib

    from ascend_batch.manifest import load_manifest
    from ascend_batch.runner.jobdir import result_tables

    make_images(tmp_path / "imgs", 2)
    m = load_manifest(tiny_manifest(tmp_path, tmp_path / "imgs"))
    tables = result_tables(m)
    digest = hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == m.fingerprint()


# -- a script without the main guard -----------------------------------------------------------------

UNGUARDED = "import ascend_batch\n\nreport = ascend_batch.run({manifest!r})\nprint('done', report.status.ok)\n"
GUARDED = (
    "import ascend_batch\n\n"
    'if __name__ == "__main__":\n'
    "    report = ascend_batch.run({manifest!r})\n"
    "    print('done', report.status.ok)\n"
)


def test_script_without_main_guard_gets_one_sentence(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 4)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", devices='["cpu:0", "cpu:1"]')
    script = tmp_path / "classify.py"
    script.write_text(UNGUARDED.format(manifest=str(m)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0
    assert "bootstrapping phase" not in r.stderr and "__mp_main__" not in r.stderr
    assert r.stderr.count('if __name__ == "__main__":') == 1, r.stderr
    assert str(script) in r.stderr and "MissingMainGuard" in r.stderr
    assert r.stderr.count("Traceback") == 1 and len(r.stderr.splitlines()) < 15, r.stderr
    # with the guard, the same script runs the job
    script.write_text(GUARDED.format(manifest=str(m)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "done 4" in r.stdout


# -- scriptable: run --json, slurm submit --dry-run --json -----------------------------------------------


def test_run_json_reports_on_stdout(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    m = tiny_manifest(tmp_path, tmp_path / "imgs")
    r = cli("run", m, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout holds the report alone
    assert report["exit_code"] == 0 and report["error"] is None and report["success"] is True
    assert report["output"] == str(tmp_path / "out")
    assert (report["images_this_run"], report["images"], report["ok"], report["errors"]) == (6, 6, 5, 1)
    assert report["n_items"] == 6 and report["units_done"] == report["n_units"] == 1
    assert report["images_per_second"] > 0 and sum(report["top_errors"].values()) == 1
    assert "job done" in r.stderr  # the human lines and the progress go to stderr

    r = cli("run", m, "--json", "--max-error-fraction", "0.1")  # the job is complete, but too many errors
    assert r.returncode == 6
    report = json.loads(r.stdout)
    assert report["exit_code"] == 6 and "max_error_fraction" in report["error"]
    assert report["images_this_run"] == 0 and report["errors"] == 1 and report["success"] is False

    r = cli("run", tmp_path / "nope.toml", "--json")
    assert r.returncode == 2
    report = json.loads(r.stdout)
    assert report["exit_code"] == 2 and "nope.toml" in report["error"] and report["images"] is None


def test_slurm_dry_run_json_and_array_warning(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 7)
    m = tiny_manifest(tmp_path, tmp_path / "imgs", unit_size=3)  # 3 units
    r = cli("slurm", "submit", m, "--array", "5", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["units"] == 3 and plan["tasks"] == [0, 1, 2, 3, 4]
    assert "#SBATCH" in plan["scripts"]["array"]["text"] and plan["commands"][0][0] == "sbatch"
    assert len(plan["warnings"]) == 1 and "warning: --array 5" in r.stderr
    assert "(3;" in r.stderr and "tasks 3..4" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing written

    text = cli("slurm", "submit", m, "--array", "3", "--dry-run")
    assert text.returncode == 0 and "warning" not in text.stderr and "#SBATCH" in text.stdout

    out = tmp_path / "out"  # a started job: its recorded unit count
    out.mkdir()
    (out / "_job.json").write_text(json.dumps({"n_units": 2, "n_items": 6}))
    r = cli("slurm", "submit", m, "--array", "3", "--dry-run")
    assert r.returncode == 0 and "more tasks than the job has units (2;" in r.stderr and "task 2 " in r.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_run_stops_with_130_on_a_signal_outside_the_supervisor(sig: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the supervisor takes the signals (listing) and after it gives them back (finalize, the
    report), a stop is exit 130 as it is inside it, not 143 (SIGTERM's default), click's 'Aborted!'
    (exit 1), or swallowed by an ``except Exception`` on the way."""
    import os
    import signal

    from ascend_batch import cli as cli_module
    from ascend_batch.errors import EXIT_INTERRUPTED

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def app(**kw: object) -> None:
        cli_module.stop_on_signals()
        try:
            os.kill(os.getpid(), getattr(signal, sig))
            signal.sigtimedwait([], 0.5)  # let the handler run
        except Exception:  # what night_report and other best-effort steps do
            pass

    monkeypatch.setattr(cli_module, "app", app)
    try:
        with pytest.raises(SystemExit) as info:
            cli_module.main()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert info.value.code == EXIT_INTERRUPTED
