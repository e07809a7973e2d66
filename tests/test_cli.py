"""Every entrypoint reports a user error as one line on stderr with exit status 2.

Each case runs a script as a subprocess (each imports jax, a few seconds), so
the cases pick errors that surface before any heavy work.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``scripts/<script>`` (or a path under the repo) from the repo root."""
    path = script if "/" in script else f"scripts/{script}"
    environ = {k: v for k, v in os.environ.items() if k != "COMPDIFF_TRACEBACK"}
    environ.update(env or {})
    return subprocess.run([sys.executable, path, *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line(proc: subprocess.CompletedProcess, script: str, pattern: str = "") -> str:
    """Exit 2, exactly one stderr line ``<script>: error: ...`` matching ``pattern``."""
    lines = stderr_lines(proc)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    prefix = f"{os.path.basename(script)}: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    """A tiny score-only (eps) model on 3D points, and a copy with a corrupt checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    points = root / "points3d.npz"
    np.savez(points, x=np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    model = root / "eps3d"
    proc = run_script("train.py", "--config=configs/models/toy2d.py:param=eps",
                      f"--config.data.path={points}", "--config.train.steps=1",
                      "--config.model.hidden=8", "--config.model.num_blocks=1",
                      "--config.schedule.num_levels=10", f"--workdir={model}")
    assert proc.returncode == 0, proc.stderr
    corrupt = root / "corrupt"
    shutil.copytree(model, corrupt)
    for path in (corrupt / "checkpoints").rglob("*"):
        if path.is_file() and "default" in path.parts:
            path.write_text("garbage")
    return {"model": str(model), "corrupt": str(corrupt)}


# (id, script, arguments, expected text in the line); {model} / {corrupt}: the fixture's runs.
CASES = [
    ("config_variant", "train.py", ["--config=configs/models/toy2d.py:dataset=ring,param=epsx",
                                    "--workdir=/tmp/compdiff_cli_unused"],
     "flag --config=configs/models/toy2d.py:dataset=ring,param=epsx: unknown param 'epsx'; known:"),
    ("unknown_dataset", "train.py", ["--config=configs/models/toy2d.py:dataset=moons",
                                     "--workdir=/tmp/compdiff_cli_unused"],
     "unknown dataset 'moons'"),
    ("missing_config_file", "train.py", ["--config=configs/nope.py",
                                         "--workdir=/tmp/compdiff_cli_unused"],
     "cannot load the config file: [Errno 2] No such file or directory"),
    ("unknown_config_field", "train.py", ["--config=configs/models/toy2d.py",
                                          "--config.train.stepz=3",
                                          "--workdir=/tmp/compdiff_cli_unused"],
     "unknown config field 'stepz'. Did you mean \"steps\""),
    ("missing_flag", "train.py", ["--config=configs/models/toy2d.py"],
     "--workdir must have a value"),
    ("missing_data_file", "train.py", ["--config=configs/models/toy2d.py",
                                       "--config.data.path=/nonexistent/points.npz",
                                       "--workdir=/tmp/compdiff_cli_unused"],
     "/nonexistent/points.npz"),
    ("unknown_sampler", "sample.py", ["--model=r=oracle:ring", "--sampler=langevin",
                                      "--out=/tmp/compdiff_cli_unused"],
     "unknown sampler 'langevin'"),
    ("malformed_expression", "sample.py", ["--model=r=oracle:ring", "--composition=r*",
                                           "--out=/tmp/compdiff_cli_unused"],
     "expected a model name or '('"),
    ("unknown_flag", "sample.py", ["--model=r=oracle:ring", "--bogus",
                                   "--out=/tmp/compdiff_cli_unused"],
     "Unknown command line flag 'bogus' (--help lists the flags)"),
    ("non_positive_size", "sample.py", ["--model=r=oracle:ring", "--num=0",
                                        "--out=/tmp/compdiff_cli_unused"],
     "num must be positive"),
    ("extra_argument", "sample.py", ["--model=r=oracle:ring", "--out=/tmp/compdiff_cli_unused",
                                     "stray"], "unexpected arguments: ['stray']"),
    ("missing_checkpoint", "sample.py", ["--model=r=/nonexistent/run",
                                         "--out=/tmp/compdiff_cli_unused"],
     "no training run at /nonexistent/run"),
    ("corrupt_checkpoint", "sample.py", ["--model=r={corrupt}", "--out=/tmp/compdiff_cli_unused"],
     "{corrupt}"),
    ("score_only_mixture", "sample.py", ["--model=a={model}", "--model=b={model}",
                                         "--composition=a+b", "--out=/tmp/compdiff_cli_unused"],
     "a mixture needs every component's log-density"),
    ("mismatched_dimensions", "sample.py", ["--model=a={model}", "--model=r=oracle:ring",
                                            "--composition=a*r",
                                            "--out=/tmp/compdiff_cli_unused"],
     "different dimensions"),
    ("table_variant", "run.py", ["--config=configs/experiments/table2d.py:nope",
                                 "--workdir=/tmp/compdiff_cli_unused"],
     "unknown table2d variant 'nope'"),
    ("bench_usage", "bench_samplers.py", ["--small_only"], "--small_only needs --small"),
    ("mode_weights_size", "mode_weights.py", ["--num=0"], "flag --num=0"),
    ("damping_flag", "damping.py", ["--num=abc"], "flag --num=abc"),
    ("emptiness_levels", "emptiness.py", ["--levels=0"], "flag --levels=0"),
    ("noise_chains_num", "noise_chains.py", ["--workdir=/tmp/x", "--num=0"], "flag --num=0"),
    ("energy_levels_score_only", "energy_levels.py", ["--workdir={model}"],
     "the level-consistency check of {model} needs a log-density"),
]


@pytest.mark.parametrize("script, args, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_user_error_is_one_line(request, script, args, expected):
    paths = {}
    if any("{" in a for a in args):
        paths = request.getfixturevalue("trained")
    args = [a.format(**paths) for a in args]
    assert_one_line(run_script(script, *args), script, expected.format(**paths))


def test_busy_workdir_is_one_line():
    proc = run_script("tests/cli_helper.py", "--error=busy")
    assert_one_line(proc, "cli_helper.py", "runs/x is in use by pid 1")


def test_busy_workdir_train(tmp_path):
    from compdiff import workdir

    with workdir.lock(str(tmp_path)):
        proc = run_script("train.py", "--config=configs/models/toy2d.py", f"--workdir={tmp_path}")
    assert_one_line(proc, "train.py", "is in use by")


def test_multiline_message_becomes_one_line():
    proc = run_script("tests/cli_helper.py", "--error=value")
    assert_one_line(proc, "cli_helper.py", "a bad value spread over two lines")


def test_verbose_shows_the_traceback():
    proc = run_script("sample.py", "--model=r=oracle:ring", "--composition=r*",
                      "--out=/tmp/compdiff_cli_unused", "--verbose")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert stderr_lines(proc)[-1].startswith("sample.py: error: expected a model name")
    # At flag-parse time too, through the environment.
    proc = run_script("train.py", "--config=configs/models/toy2d.py:param=epsx",
                      "--workdir=/tmp/compdiff_cli_unused", env={"COMPDIFF_TRACEBACK": "1"})
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert stderr_lines(proc)[-1].startswith("train.py: error: flag --config=")


def test_internal_error_keeps_its_traceback():
    proc = run_script("tests/cli_helper.py", "--error=zero")
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ZeroDivisionError" in proc.stderr


def test_help_lists_the_flags():
    proc = run_script("sample.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--composition" in proc.stdout and "--[no]verbose" in proc.stdout


def no_warnings(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert not [line for line in output.splitlines() if "warning" in line.lower()], output


def test_normal_run_prints_no_warnings(tmp_path):
    no_warnings(run_script("sample.py", "--model=r=oracle:ring", "--model=b=oracle:bar",
                           "--composition=r*b", "--levels=10", "--num=16", "--verdict=false",
                           "--steps_per_level=1",
                           f"--out={tmp_path / 'rb'}"))


def test_trained_model_run_prints_no_warnings(trained, tmp_path):
    """Loading a checkpoint read-only makes orbax log a WARNING, which cli hides."""
    no_warnings(run_script("sample.py", f"--model=a={trained['model']}", "--sampler=ula",
                           "--steps_per_level=1", "--num=16", f"--out={tmp_path / 'a'}"))
