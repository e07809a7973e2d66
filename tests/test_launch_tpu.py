"""launch_tpu.sh against a fake gcloud: the command sequence, remote quoting, --dry-run,
failures and argument errors. No network; the remote commands are run locally with bash."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_tpu.sh"

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
word = os.environ.get("FAKE_GCLOUD_FAIL_ON")
if word and word in sys.argv[1:]:
    print("fake gcloud: failing on " + word, file=sys.stderr)
    sys.exit(int(os.environ.get("FAKE_GCLOUD_STATUS", "1")))
"""

# Stands in for python3 on a worker: records its argv, prints a line, exits as told.
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_PYTHON_LOG"], "w") as f:
    json.dump(sys.argv[1:], f)
print("worker says hello")
sys.exit(int(os.environ.get("FAKE_PYTHON_STATUS", "0")))
"""

V4_32 = ["--name=cd", "--zone=us-central2-b", "--accelerator-type=v4-32", "--spot"]
TRAIN = ["--", "python", "scripts/train.py", "--config=configs/models/clevr.py:paper",
         "--workdir=gs://bucket/clevr"]


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    log = tmp_path / "gcloud.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "GCLOUD"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_LOG=str(log))

    def run(*args, **extra_env):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                              env={**env, **extra_env}, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls

    return run


def command_of(call):
    (cmd,) = [a for a in call if a.startswith("--command=")]
    return cmd[len("--command="):]


def step_of(call):
    if call[3] in ("create", "delete", "scp"):
        return call[3]
    cmd = command_of(call)
    for key, step in [("tar -xzf", "unpack"), ("pip install", "install"),
                      ("trap", "start"), ("compdiff_run.log;", "run"), ("/dev/null;", "status")]:
        if key in cmd:
            return step
    raise AssertionError(call)


def test_full_sequence_v4_32_spot(fake):
    proc, calls = fake(*V4_32, "--project=my-proj", "--delete", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert [step_of(c) for c in calls] == [
        "create", "scp", "unpack", "install", "start", "run", "status", "delete"]
    for c in calls:
        assert c[:3] == ["compute", "tpus", "tpu-vm"]
        assert "--zone=us-central2-b" in c and "--project=my-proj" in c
    create = calls[0]
    assert create[3:5] == ["create", "cd"]
    assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"} <= set(create)
    scp = calls[1]
    assert scp[4].endswith(".tar.gz") and scp[5] == "cd:compdiff-src.tar.gz"
    assert "--worker=all" in scp
    for c in calls[2:5] + calls[6:7]:
        assert c[3:5] == ["ssh", "cd"] and "--worker=all" in c
    assert "python3 -m pip install -U 'jax[tpu]' -e ." in command_of(calls[3])
    assert "--worker=0" in calls[5]
    assert calls[7][3:5] == ["delete", "cd"] and "--quiet" in calls[7]


def test_no_project_flag_unless_given(fake):
    proc, calls = fake(*V4_32, *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 7 and all("--zone=us-central2-b" in c for c in calls)
    assert not any(a.startswith("--project") for c in calls for a in c)


def test_remote_quoting_round_trip(fake, tmp_path):
    user_args = ["--config=configs/models/clevr.py:paper", "--config.train.note=a b=c",
                 "--workdir=gs://b/x y", "--note=it's $HOME `id` \"q\" \\ ;&|*"]
    proc, calls = fake(*V4_32, "--", "python", "scripts/train.py", *user_args)
    assert proc.returncode == 0, proc.stderr
    start, run, status = (command_of(c) for c in calls[-3:])

    # Play the worker: a home with the copied repo and a python3 that records its argv.
    home = tmp_path / "home"
    (home / "compdiff").mkdir(parents=True)
    bin_dir = tmp_path / "worker_bin"
    bin_dir.mkdir()
    py = bin_dir / "python3"
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    argv_log = tmp_path / "argv.json"
    env = {"HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_PYTHON_LOG": str(argv_log), "FAKE_PYTHON_STATUS": "3"}
    subprocess.run(["bash", "-c", start], env=env, check=True, timeout=30)
    streamed = subprocess.run(["bash", "-c", run], env=env, capture_output=True, text=True,
                              timeout=30)
    assert json.loads(argv_log.read_text()) == ["scripts/train.py", *user_args]
    assert "worker says hello" in streamed.stdout
    assert streamed.returncode == 3  # the command's status on the worker comes back
    assert subprocess.run(["bash", "-c", status], env=env, timeout=30).returncode == 3

    # The same, by parsing: the user command inside the start command.
    inner = start.split("HUP; ", 1)[1].split("; echo $?", 1)[0]
    assert shlex.split(inner) == ["python3", "scripts/train.py", *user_args]


def test_dry_run_runs_nothing_and_prints_the_sequence(fake):
    args = [*V4_32, "--project=my-proj", "--delete", *TRAIN]
    dry, dry_calls = fake("--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    assert dry_calls == []
    printed = [shlex.split(line[2:]) for line in dry.stdout.splitlines() if line.startswith("+ ")]
    assert all(p[0] == "gcloud" for p in printed)
    real, calls = fake(*args)
    assert real.returncode == 0, real.stderr
    assert len(printed) == len(calls) == 8
    for p, c in zip(printed, calls):
        if c[3] == "scp":  # the local tarball lives in a fresh temporary directory
            p, c = p[:5] + p[6:], c[:4] + c[5:]
        assert p[1:] == c


def test_gcloud_env_var_names_the_binary(fake, tmp_path):
    proc, calls = fake("--dry-run", *V4_32, *TRAIN, GCLOUD="/opt/my/gcloud")
    assert proc.returncode == 0 and calls == []
    assert all(line.startswith("+ /opt/my/gcloud compute tpus")
               for line in proc.stdout.splitlines() if line.startswith("+ "))
    proc, calls = fake(*V4_32, *TRAIN, GCLOUD=str(tmp_path / "bin" / "gcloud"))
    assert proc.returncode == 0 and len(calls) == 7


@pytest.mark.parametrize("word,step", [("create", "create"), ("scp", "copy")])
def test_failing_step_is_named_and_delete_still_runs(fake, word, step):
    proc, calls = fake(*V4_32, "--delete", *TRAIN, FAKE_GCLOUD_FAIL_ON=word,
                       FAKE_GCLOUD_STATUS="7")
    assert proc.returncode == 7
    assert f"step '{step}' failed" in proc.stderr
    assert calls[-1][3:5] == ["delete", "cd"]
    assert [c[3] for c in calls].count(word) == 1


def test_failing_step_without_delete_keeps_the_vm(fake):
    proc, calls = fake(*V4_32, *TRAIN, FAKE_GCLOUD_FAIL_ON="ssh")
    assert proc.returncode != 0 and "step 'unpack' failed" in proc.stderr
    assert [c[3] for c in calls] == ["create", "scp", "ssh"]


def test_reuse_clone_and_delete_only(fake):
    proc, calls = fake("--name=cd", "--zone=z", "--reuse",
                       "--clone=https://github.com/o/compdiff.git@v1.2", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert calls[0][3] == "ssh" and "--worker=all" in calls[0]
    assert command_of(calls[0]) == ("rm -rf ~/compdiff && git clone "
                                    "https://github.com/o/compdiff.git ~/compdiff && "
                                    "cd ~/compdiff && git checkout v1.2")
    assert not any(c[3] in ("create", "scp", "delete") for c in calls)
    proc, calls = fake("--name=cd", "--zone=z", "--reuse",
                       "--clone=git@github.com:o/compdiff.git", "--dry-run", *TRAIN)
    assert "git clone git@github.com:o/compdiff.git ~/compdiff'" in proc.stdout
    proc, calls = fake("--name=cd", "--zone=z", "--delete-only")
    assert proc.returncode == 0 and calls == [["compute", "tpus", "tpu-vm", "delete", "cd",
                                               "--zone=z", "--quiet"]]


@pytest.mark.parametrize("args,message", [
    ([*V4_32, "--", "bash", "-c", "rm -rf /"], "must be 'python scripts/"),
    ([*V4_32, "--", "python", "other/train.py"], "must be 'python scripts/"),
    ([*V4_32], "missing command"),
    (["--zone=z", "--accelerator-type=v4-8", *TRAIN], "missing --name"),
    (["--name=n", "--accelerator-type=v4-8", *TRAIN], "missing --zone"),
    (["--name=n", "--zone=z", *TRAIN], "missing --accelerator-type"),
    ([*V4_32, "--bogus", *TRAIN], "unknown flag '--bogus'"),
])
def test_argument_errors(fake, args, message):
    proc, calls = fake(*args)
    assert proc.returncode == 2
    assert calls == []
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch_tpu.sh: error:") and message in lines[0]


def test_help(fake):
    proc, calls = fake("--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout and calls == []
