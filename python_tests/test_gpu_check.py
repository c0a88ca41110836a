"""bench/gpu_check.sh's logic, rehearsed with --dry-run and canned stand-ins (no GPU, no torch):
step order, failures and time-outs that do not stop the later steps, sanitizer results, the
budget, and the summary that reports all of it."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["build", "test_cuda", "graph", "suite", "memcheck", "racecheck", "synccheck", "bench"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def dry_run(out: pathlib.Path, budget: int, override: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, OUT=str(out), GPU_CHECK_DRY_OVERRIDE=override)
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(budget)], env=env, capture_output=True,
                         text=True, timeout=120)
    rows = {}
    lines = (out / "summary.txt").read_text().splitlines()
    header = next(k for k, line in enumerate(lines) if line.split()[:2] == ["step", "result"])
    for line in lines[header + 1:header + 1 + len(STEPS)]:
        step, rest = line.split(maxsplit=1)
        result = next((r for r in ("not available", "no time") if rest.startswith(r)), rest.split()[0])
        start, took, cap = (int(w.rstrip("s")) for w in rest[len(result):].split()[:3])
        rows[step] = dict(result=result, start=start, time=took, cap=cap)
    return run, rows


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    # The build hangs until its deadline (16 s * 140 / 480 = 4 s), test_cuda fails, memcheck
    # cannot attach, racecheck finds an error: every step still runs, in order.
    run, rows = dry_run(tmp_path, 16, "build=hang test_cuda=fail memcheck=unsupported racecheck=errors *=pass")
    assert run.returncode == 1, run.stdout + run.stderr
    assert list(rows) == STEPS
    assert {step: row["result"] for step, row in rows.items()} == {
        "build": "timeout", "test_cuda": "FAIL", "graph": "pass", "suite": "pass",
        "memcheck": "not available", "racecheck": "FAIL", "synccheck": "pass", "bench": "pass"}
    assert "3 step(s) failed" in run.stdout
    # every step started, in order, in the log
    log = (tmp_path / "gpu_check.log").read_text()
    starts = [log.index(f"=============== {step} [") for step in STEPS]
    assert starts == sorted(starts)
    assert "stand-in for bench: passes" in log
    # each step's cap ends at its deadline, the budget's shares summed up to it: in order, inside
    # the budget, the build's at 16 * 140 / 480 = 4 s and the last one's at the budget itself
    deadlines = [row["start"] + row["cap"] for row in rows.values()]
    assert deadlines == sorted(deadlines) and deadlines[0] == 4 and deadlines[-1] == 16


def test_all_steps_passing_exit_zero(tmp_path):
    run, rows = dry_run(tmp_path, 480, "*=pass")
    assert run.returncode == 0, run.stdout + run.stderr
    assert all(row["result"] == "pass" for row in rows.values()) and list(rows) == STEPS
    assert "no step failed" in run.stdout


def test_steps_left_without_time_are_reported_and_fail(tmp_path):
    # A 1 s budget leaves every step but the last a deadline of 0 s: none of them may run.
    run, rows = dry_run(tmp_path, 1, "*=pass")
    assert run.returncode == 1
    assert all(rows[step]["result"] == "no time" and rows[step]["cap"] == 0 for step in STEPS[:-1])
    assert "stand-in for build" not in (tmp_path / "gpu_check.log").read_text()


def test_bad_arguments_are_refused(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    for args in (["--dry-run", "soon"], ["--dry-run", "0"]):
        run = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "usage: bash bench/gpu_check.sh" in run.stderr
    env["GPU_CHECK_DRY_OVERRIDE"] = "*=pass"
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "GPU_CHECK_DRY_OVERRIDE is for --dry-run only" in run.stderr
