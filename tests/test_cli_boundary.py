"""Boundaries of the command line: the --out folder, file modes, interrupts (SIGINT/SIGTERM) and re-runs."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import simdl
from simdl.cli import main

RUN_CFG = """
[task]
kind = "random_quadratics"
n_workers = 4
dim = 3
[train]
steps = {steps}
eval_every = {eval_every}
[[runs]]
algorithm = "dsgd"
learning_rate = 0.1
[[runs]]
algorithm = "dsgd"
learning_rate = 0.05
[[runs]]
algorithm = "dsgd"
learning_rate = 0.02
"""
SWEEP_CFG = RUN_CFG + """
[sweep]
topology = ["ring", "chain", "complete"]
"""


def _cfg(tmp_path, text=RUN_CFG, steps=20, eval_every=10):
    path = tmp_path / "c.toml"
    path.write_text(text.format(steps=steps, eval_every=eval_every))
    return path


def _no_simulate(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("simulate must not be called")

    monkeypatch.setattr(simdl, "simulate", fail)
    monkeypatch.setattr(simdl, "simulate_batch", fail)
    monkeypatch.setattr("simdl.runtime.simulate_batch", fail)


@pytest.mark.parametrize("command", ["run", "sweep", "tune"])
def test_out_that_is_a_file_is_rejected_before_anything_runs(tmp_path, capsys, monkeypatch, command):
    _no_simulate(monkeypatch)
    cfg = _cfg(tmp_path, SWEEP_CFG if command != "run" else RUN_CFG)
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main([command, str(cfg), "--out", str(target), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err == f"simdl: error: --out: {target} is a file, expected a writable directory\n"
    assert target.read_text() == "not a folder"
    inside = target / "sub"  # a folder that would have to be created inside a file
    assert main([command, str(cfg), "--out", str(inside), "--quiet", "--no-plots"]) == 2
    assert err_line(capsys) == f"simdl: error: --out: {inside} lies inside the file {target}, " \
                               "expected a writable directory"


def err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to a 0500 folder anyway")
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_out_that_cannot_be_written_is_rejected(tmp_path, capsys, monkeypatch, command):
    _no_simulate(monkeypatch)
    cfg = _cfg(tmp_path, SWEEP_CFG if command == "sweep" else RUN_CFG)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([command, str(cfg), "--out", str(locked), "--quiet", "--no-plots"]) == 2
        assert err_line(capsys) == f"simdl: error: --out: {locked} is not writable, expected a writable directory"
        assert main([command, str(cfg), "--out", str(locked / "new"), "--quiet", "--no-plots"]) == 2
        assert err_line(capsys) == (f"simdl: error: --out: {locked / 'new'} cannot be created ({locked} is not "
                                    "writable), expected a writable directory")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_results_files_are_world_readable(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 3
    for path in (out / "results.json", out / "summary.csv", *records):
        assert _mode(path) == 0o644, path
    sw = tmp_path / "s"
    assert main(["sweep", str(_cfg(tmp_path, SWEEP_CFG)), "--out", str(sw), "--quiet", "--no-plots"]) == 0
    records = sorted((sw / "runs").glob("*.json"))
    assert len(records) == 9
    for path in (sw / "sweep.csv", *records):
        assert _mode(path) == 0o644, path


def test_second_run_into_the_same_out_keeps_earlier_results(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    first = json.loads((out / "results.json").read_text())["runs"]
    assert len(first) == 3 and len(list((out / "runs").glob("*.json"))) == 3
    capsys.readouterr()
    # the same command again: nothing is simulated, results.json holds the same runs
    _no_simulate(monkeypatch)
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert "3 of 3 runs already finished" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())["runs"]
    assert again == first
    monkeypatch.undo()
    # a different run into the same folder: earlier runs stay recorded under DIR/runs
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-plots", "--set", "train.steps=30"]) == 0
    latest = json.loads((out / "results.json").read_text())["runs"]
    assert [r["history"]["step"][-1] for r in latest] == [30, 30, 30]
    kept = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert len(kept) == 6
    assert sorted(r["id"] for r in first) == sorted(r["id"] for r in kept if r["history"]["step"][-1] == 20)
    # a partial run then the full one: the finished run is skipped, the rest run
    part = tmp_path / "p"
    assert main(["run", str(cfg), "--out", str(part), "--quiet", "--no-plots", "--runs", "1"]) == 0
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(part), "--quiet", "--no-plots"]) == 0
    assert "1 of 3 runs already finished" in capsys.readouterr().out
    runs = json.loads((part / "results.json").read_text())["runs"]
    assert [r["hyperparams"]["learning_rate"] for r in runs] == [0.1, 0.05, 0.02]


@pytest.mark.parametrize("command,sig,code", [
    ("run", signal.SIGINT, 130), ("run", signal.SIGTERM, 143),
    ("sweep", signal.SIGINT, 130), ("sweep", signal.SIGTERM, 143)])
def test_interrupt_stops_cleanly_with_finished_runs_saved(tmp_path, command, sig, code):
    # each run takes a few seconds on a CPU; the signal comes once the first run is saved
    cfg = _cfg(tmp_path, SWEEP_CFG if command == "sweep" else RUN_CFG, steps=100_000, eval_every=2_000)
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "simdl.cli", command, str(cfg), "--out", str(out), "--quiet", "--no-plots"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "runs").is_dir() or not list((out / "runs").glob("*.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.05)
        time.sleep(0.3)  # into the next run
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    saved = len(list((out / "runs").glob("*.json")))
    assert 1 <= saved < (9 if command == "sweep" else 3)
    line = err.strip().splitlines()[-1]
    assert f"{saved} finished run" in line and "run the same command again" in line and str(out) in line, err
    assert not (out / "sweep.csv").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_out_that_cannot_be_written_is_rejected_even_as_root(tmp_path, capsys, monkeypatch, command):
    """The same check where the OS says the folder is not writable (as for a 0500 folder of another user)."""
    _no_simulate(monkeypatch)
    cfg = _cfg(tmp_path, SWEEP_CFG if command == "sweep" else RUN_CFG)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(locked) else real(p, mode, **k))
    assert main([command, str(cfg), "--out", str(locked), "--quiet", "--no-plots"]) == 2
    assert err_line(capsys) == f"simdl: error: --out: {locked} is not writable, expected a writable directory"
    assert main([command, str(cfg), "--out", str(locked / "a" / "b"), "--quiet", "--no-plots"]) == 2
    assert err_line(capsys) == (f"simdl: error: --out: {locked / 'a' / 'b'} cannot be created ({locked} is not "
                                "writable), expected a writable directory")
    assert list(locked.iterdir()) == []


def test_unprepared_tfds_dataset_is_a_short_error_with_the_command_that_prepares_it(tmp_path, monkeypatch, capsys):
    """A paper config whose tensorflow-datasets dataset is not prepared, at full scale: at most 5 lines, exit 2, no
    traceback (the tiny scale swaps in a stand-in instead, tests/test_stand_in.py)."""
    from simdl.cli import main

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    config = Path(__file__).resolve().parent.parent / "configs" / "kamp_mnist_cnn_dynamic.toml"
    code = main(["run", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) <= 5 and "simdl: error:" in err and "tfds build mnist" in err, err


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_second_process_on_the_same_out_finds_the_lock(tmp_path, monkeypatch, capsys, command):
    from simdl.cli import LOCK_FILE

    _no_simulate(monkeypatch)
    cfg = _cfg(tmp_path, SWEEP_CFG if command == "sweep" else RUN_CFG)
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(  # another simdl process holding the folder's lock
        [sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); print('held', flush=True); "
         "time.sleep(60)", str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([command, str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 2
        assert err_line(capsys) == (f"simdl: error: --out: {out} is in use by another simdl process (pid "
                                    f"{holder.pid}); wait for it to finish or use another --out")
        assert not (out / "runs").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed): the kernel released its lock, so the folder is usable again at once
    monkeypatch.undo()
    assert main([command, str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
