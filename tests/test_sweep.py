"""Config-file sweeps: helpers, errors before anything runs, end-to-end runs, kill and resume."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from compdiff import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER_CONFIG = os.path.join(ROOT, "tests", "sweep_helper_config.py")


def _sweep_cmd(config: str, name: str, workdir, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), f"--config={config}",
            f"--sweep={name}", f"--workdir={workdir}", *extra]


def _run_sweep(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(*args, **kwargs), capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _csv(workdir) -> list[dict]:
    with open(os.path.join(workdir, "sweep.csv")) as f:
        return list(csv.DictReader(f))


def _starts(workdir, name: str) -> int:
    with open(os.path.join(workdir, name, "runs.txt")) as f:
        return len(f.read().splitlines())


# --- helpers ----------------------------------------------------------------------------------
def test_product_is_every_combination_last_fastest():
    points = sweep.product(sweep.values("a", (1, 2)), sweep.values("b.c", ("x", "y", "z")))
    assert points == [{"a": 1, "b.c": "x"}, {"a": 1, "b.c": "y"}, {"a": 1, "b.c": "z"},
                      {"a": 2, "b.c": "x"}, {"a": 2, "b.c": "y"}, {"a": 2, "b.c": "z"}]
    with pytest.raises(ValueError, match=r"\['a'\] are set twice"):
        sweep.product(sweep.values("a", (1,)), sweep.values("a", (2,)))


def test_zip_pairs_values_and_chain_concatenates():
    z = sweep.zipped(sweep.values("a", (1, 2, 3)), sweep.values("b", (4, 5, 6)))
    assert z == [{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}]
    with pytest.raises(ValueError, match=r"equal lengths, got \[2, 3\]"):
        sweep.zipped(sweep.values("a", (1, 2)), sweep.values("b", (4, 5, 6)))
    both = sweep.chain(z[:1], sweep.product(sweep.fixed_point({"c": 0}), sweep.values("a", (7,))))
    assert both == [{"a": 1, "b": 4}, {"c": 0, "a": 7}]
    with pytest.raises(ValueError, match="no values"):
        sweep.values("a", ())


def test_point_names_use_the_swept_keys_shortest_unique_suffix():
    points = sweep.product(sweep.fixed_point({"models": ("oracle",)}),
                           sweep.values("samplers.hmc.step_a", (0.01, 0.1)),
                           sweep.values("samplers.mala.step_a", (0.5,)),
                           sweep.values("samplers.hmc.damping", (0.0, 0.9)))
    swept = sweep._swept_keys(points)
    assert swept == ("samplers.hmc.step_a", "samplers.hmc.damping")  # fixed keys are not swept
    assert sweep.point_name(points[1], swept) == "step_a=0.01,damping=0.9"
    both = ("samplers.hmc.step_a", "samplers.mala.step_a")
    assert sweep.point_name({k: 1 for k in both}, both) == "hmc.step_a=1,mala.step_a=1"
    assert sweep.format_value(("a", 1)) == '("a", 1)' and sweep.format_value(True) == "true"


def test_a_half_written_metrics_file_is_not_a_result(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"score": 1.0, "l')
    with pytest.raises(ValueError, match="not complete JSON"):
        sweep.read_metrics(str(path))
    path.write_text(json.dumps({"rows": [{"status": "ok", "ll": 1.5, "diverged": False,
                                          "sampler": "hmc"}]}))
    assert sweep.read_metrics(str(path)) == {"ll": 1.5, "diverged": 0}


# --- errors before anything runs -------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("nope", "unknown sweep 'nope'"),
    ("bad_key", "sweep key 'opt.lrr' is not in the config"),
    ("bad_type", "sweep key 'y' = 2.5 does not fit the config"),
])
def test_bad_sweeps_fail_before_running(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        sweep.resolve(HELPER_CONFIG, name)
    result = _run_sweep(HELPER_CONFIG, name, tmp_path / "w")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("sweep.py: error: ")
    assert message in result.stderr and not (tmp_path / "w").exists()


def test_table2d_sweeps_resolve_and_print_launch_commands():
    spec = sweep.resolve(os.path.join(ROOT, "configs", "experiments", "table2d.py") + ":paper",
                         "hmc_step_damping")
    assert spec.swept == ("samplers.hmc.sampler.step.a", "samplers.hmc.sampler.damping")
    assert len(spec.points) == 12 and spec.script.endswith("scripts/run.py")
    lines = sweep.launch_commands(spec, "gs://bucket/sweep/", launcher="./launch_tpu.sh --reuse")
    assert len(lines) == 12
    launcher, _, cmd = lines[0].partition(" -- ")
    assert launcher == "./launch_tpu.sh --reuse"
    assert shlex.split(cmd) == [
        "python", "scripts/run.py", "--config=configs/experiments/table2d.py:paper",
        "--workdir=gs://bucket/sweep/a=0.01,damping=0.0", '--config.models=("oracle",)',
        '--config.composition_names=("product",)', '--config.sampler_names=("hmc",)',
        "--config.samplers.hmc.sampler.step.a=0.01",
        "--config.samplers.hmc.sampler.damping=0.0"]


# --- running ----------------------------------------------------------------------------------
TABLE2D_QUICK = os.path.join("configs", "experiments", "table2d.py") + ":quick"


def test_table2d_smoke_sweep_end_to_end(tmp_path):
    """The real entrypoint: two HMC step sizes on the oracle product, scored and collated."""
    workdir = tmp_path / "smoke"
    result = _run_sweep(TABLE2D_QUICK, "smoke", workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _csv(workdir)
    assert [r["samplers.hmc.sampler.step.a"] for r in rows] == ["0.03", "0.1"]
    assert list(rows[0])[:3] == ["samplers.hmc.sampler.step.a", "ll", "ll_exact"]
    for r in rows:
        assert float(r["ll"]) < float(r["ll_exact"]) and 0 < float(r["accept"]) <= 1
    md = (workdir / "sweep.md").read_text()
    assert md.startswith("| a | ll | ll_exact |") and md.count("\n| 0.") == 2
    # rerun: nothing runs again
    again = _run_sweep(TABLE2D_QUICK, "smoke", workdir)
    assert "2 of 2 points already finished" in again.stdout and "started" not in again.stdout


def test_failed_point_is_reported_and_retried(tmp_path):
    workdir = tmp_path / "grid"
    first = _run_sweep(HELPER_CONFIG, "grid", workdir, "--parallel=2")
    assert first.returncode == 1
    assert "2 points failed" in first.stderr and "x=2.0,y=1: exit status 2" in first.stderr
    assert [r["x"] for r in _csv(workdir)] == ["1.0", "1.0"]
    second = _run_sweep(HELPER_CONFIG, "grid", workdir, "--parallel=2")
    assert second.returncode == 0, second.stderr
    rows = _csv(workdir)
    assert [(r["x"], r["y"], r["score"]) for r in rows] == [
        ("1.0", "1", "1.0"), ("1.0", "2", "2.0"), ("2.0", "1", "2.0"), ("2.0", "2", "4.0")]
    assert list(rows[0]) == ["x", "y", "score", "lr", "ok", "wall_s"]
    assert _starts(workdir, "x=1.0,y=1") == 1 and _starts(workdir, "x=2.0,y=2") == 2


def test_killed_sweep_reruns_only_the_missing_points(tmp_path):
    """SIGKILL the sweep while point 2 is half-way through writing its metrics; rerun."""
    workdir = tmp_path / "three"
    names = ["x=1.0", "x=2.0", "x=3.0"]
    proc = subprocess.Popen(_sweep_cmd(HELPER_CONFIG, "three", workdir), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = workdir / names[1] / "metrics.json"
    deadline = time.time() + 120
    while not (half.exists() and half.stat().st_size > 0):
        assert time.time() < deadline and proc.poll() is None, "point 2 never started writing"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marker = workdir / names[0] / sweep.MARKER
    assert marker.exists() and not (workdir / names[1] / sweep.MARKER).exists()
    first_mtime = marker.stat().st_mtime_ns
    time.sleep(1.0)  # the point's process died with the sweep: it never completes the file
    with pytest.raises(ValueError, match="not complete JSON"):
        sweep.read_metrics(str(half))

    result = _run_sweep(HELPER_CONFIG, "three", workdir)
    assert result.returncode == 0, result.stderr
    assert "1 of 3 points already finished" in result.stdout
    assert "started x=1.0" not in result.stdout and "started x=2.0" in result.stdout
    assert marker.stat().st_mtime_ns == first_mtime and _starts(workdir, names[0]) == 1
    assert _starts(workdir, names[1]) == 2  # killed once, finished on the rerun
    assert _starts(workdir, names[2]) == 1  # never started before the kill
    rows = _csv(workdir)
    assert [(r["x"], r["score"]) for r in rows] == [("1.0", "1.0"), ("2.0", "2.0"),
                                                    ("3.0", "3.0")]


def test_collate_only_adopts_complete_results_copied_from_elsewhere(tmp_path):
    """Points run remotely (--print_commands) have metrics but no marker; a half-written
    metrics file is not adopted, and nothing runs."""
    workdir = tmp_path / "three"
    (workdir / "x=1.0").mkdir(parents=True)
    (workdir / "x=1.0" / "metrics.json").write_text('{"score": 5.0, "lr": 0.1}')
    (workdir / "x=2.0").mkdir()
    (workdir / "x=2.0" / "metrics.json").write_text('{"score": 5.0, "l')
    result = _run_sweep(HELPER_CONFIG, "three", workdir, "--collate_only")
    assert result.returncode == 0, result.stderr
    assert "adopted 1 points run elsewhere: x=1.0" in result.stdout
    assert [(r["x"], r["score"], r["wall_s"]) for r in _csv(workdir)] == [("1.0", "5.0", "")]
    assert "Not finished (2): x=2.0, x=3.0" in (workdir / "sweep.md").read_text()
    assert not (workdir / "x=1.0" / "runs.txt").exists()  # adopted, not run


def test_print_commands_lists_the_unfinished_points_and_runs_nothing(tmp_path):
    workdir = tmp_path / "three"
    (workdir / "x=2.0").mkdir(parents=True)
    sweep.write_atomically(str(workdir / "x=2.0" / sweep.MARKER), "{}")
    result = _run_sweep(HELPER_CONFIG, "three", workdir, "--print_commands",
                        "--launcher=./launch_tpu.sh --name=n --zone=z --reuse")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [shlex.split(line)[-1] for line in lines] == ["--config.x=1.0", "--config.x=3.0"]
    assert all(line.startswith("./launch_tpu.sh --name=n --zone=z --reuse -- python "
                               "tests/sweep_helper.py --config=tests/sweep_helper_config.py ")
               for line in lines)
    assert not (workdir / "x=1.0").exists()
