"""The launch/ scripts: syntax, the gcloud commands of launch/tpu_vm.sh (DRY_RUN=1 and a
stand-in gcloud), launch/local_two_process.sh with a stand-in Python (arguments, exit
codes, signals) and launch/slurm_gpu.sbatch with stand-in srun/scontrol. Nothing here runs
gcloud, a TPU, SLURM or jax; each test takes about a second."""

import json
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
LOCAL = LAUNCH / "local_two_process.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"
SCRIPTS = [TPU_VM, LOCAL, SLURM]

TPU_SETTINGS = ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "SPOT",
                "WORKDIR", "CONFIG", "REMOTE_DIR", "REMOTE_VENV", "REMOTE_PYTHON", "SSH_FLAGS",
                "GCLOUD", "DRY_RUN")
SLURM_SETTINGS = ("CONFIG", "WORKDIR", "VENV", "VENV_PYTHON", "PYTHON", "MAX_REQUEUES",
                  "JAX_LOCAL_DEVICE_IDS")


def _jax_pin() -> str:
  text = (ROOT / "requirements.txt").read_text()
  match = re.search(r"^jax==(\S+)", text, re.MULTILINE)
  assert match, "requirements.txt pins jax"
  return match.group(1)


def _executable(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def _clean_env(names) -> dict:
  return {k: v for k, v in os.environ.items() if k not in names}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
  subprocess.run(["bash", "-n", str(script)], check=True)
  assert script.read_text().startswith("#!")
  assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", [TPU_VM, LOCAL], ids=lambda p: p.name)
def test_scripts_are_executable(script):
  assert os.access(script, os.X_OK)


# ---------------------------------------------------------------------------- tpu_vm.sh

@pytest.fixture
def gcloud_stub(tmp_path):
  """A gcloud that records each call as one JSON line of its arguments."""
  calls = tmp_path / "gcloud_calls.jsonl"
  stub = _executable(tmp_path / "gcloud", textwrap.dedent(f"""\
      #!{sys.executable}
      import json, sys
      with open({str(calls)!r}, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
      """))
  return stub, calls


def _calls(calls: pathlib.Path):
  if not calls.exists():
    return []
  return [json.loads(line) for line in calls.read_text().splitlines()]


def _tpu(tmp_path, gcloud_stub, *args, dry_run=True, input_text=None, **env):
  stub, _ = gcloud_stub
  full = _clean_env(TPU_SETTINGS)
  full.update({
      "TPU_NAME": "test-tpu", "ZONE": "europe-west4-a", "ACCELERATOR_TYPE": "v4-32",
      "RUNTIME_VERSION": "tpu-ubuntu2204-base", "PROJECT": "my-project",
      "WORKDIR": "gs://my-bucket/runs/t", "CONFIG": "configs/synthetic.py:15-1",
      "GCLOUD": str(stub), "DRY_RUN": "1" if dry_run else "0", "TMPDIR": str(tmp_path),
  })
  full.update(env)
  return subprocess.run([str(TPU_VM), *args], env=full, input=input_text or "",
                        capture_output=True, text=True, timeout=60, check=False)


def _printed(result):
  """The commands the script printed ('+ ' lines, with an ssh script's block after it)."""
  return "\n".join(line for line in result.stdout.splitlines()
                   if line.startswith("+ ") or line.startswith("  | "))


def test_tpu_create(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "create", "--service-account=sa@x.iam")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert f"+ {gcloud_stub[0]} compute tpus tpu-vm create test-tpu" in printed
  for piece in ("--zone=europe-west4-a", "--project=my-project", "--accelerator-type=v4-32",
                "--version=tpu-ubuntu2204-base", "--service-account=sa@x.iam"):
    assert piece in printed
  assert "--spot" not in printed
  assert _calls(gcloud_stub[1]) == [], "DRY_RUN=1 runs nothing"
  assert "ACCELERATOR_TYPE=v4-32 (set)" in result.stdout  # the settings are printed
  assert "DRY_RUN=1" in result.stdout


def test_tpu_create_spot(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "create", SPOT="1")
  assert result.returncode == 0, result.stderr
  assert "--spot" in _printed(result)


def test_tpu_create_runs_gcloud_with_the_printed_arguments(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "create", dry_run=False, PROJECT="")
  assert result.returncode == 0, result.stderr
  assert _calls(gcloud_stub[1]) == [[
      "compute", "tpus", "tpu-vm", "create", "test-tpu", "--zone=europe-west4-a",
      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]]
  assert "--project" not in result.stdout


def test_tpu_install(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "install")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert "+ tar -czf" in printed and "--exclude=./.git" in printed
  assert "--exclude=./runs" in printed
  assert f"+ {gcloud_stub[0]} compute tpus tpu-vm scp" in printed
  assert "test-tpu:gsc_jax_src.tar.gz --worker=all" in printed
  ssh = printed[printed.index("tpu-vm ssh"):]
  assert "--worker=all" in ssh.splitlines()[0]
  assert f'"jax[tpu]=={_jax_pin()}"' in ssh
  assert "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html" in ssh
  assert '-r "$dir/requirements.txt"' in ssh
  assert _calls(gcloud_stub[1]) == []
  assert not (tmp_path / "gsc_jax_src.tar.gz").exists(), "DRY_RUN=1 packs nothing"


def test_tpu_install_installs_the_requirements_pin(tmp_path, gcloud_stub):
  """The jax[tpu] version comes from requirements.txt, not from the script."""
  assert _jax_pin() not in TPU_VM.read_text()


def test_tpu_run(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "run", "--config.optim.batch_size=32")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  first = printed.splitlines()[0]
  assert "compute tpus tpu-vm ssh test-tpu --worker=all --zone=europe-west4-a" in first
  assert "--project=my-project" in first
  launch_line = next(line for line in printed.splitlines() if "nohup setsid" in line)
  for piece in ("-m gsc_jax.main", "--distributed", "--config=configs/synthetic.py:15-1",
                "--workdir=gs://my-bucket/runs/t", "--config.optim.batch_size=32",
                '>>"$log" 2>&1 </dev/null &'):
    assert piece in launch_line
  assert 'log="$HOME/gsc_jax_worker$worker.log"' in printed
  assert "agent-worker-number" in printed  # the worker number is the JAX process id
  assert _calls(gcloud_stub[1]) == []


def test_tpu_run_quotes_arguments(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "run", "--config.note=a b'c", dry_run=False)
  assert result.returncode == 0, result.stderr
  check, start = _calls(gcloud_stub[1])  # every worker is checked before any starts
  assert "--worker=all" in check and "--worker=all" in start
  assert "nohup" not in check[-1] and "still running" in check[-1]
  script = next(a for a in start if a.startswith("--command="))[len("--command="):]
  launch_line = next(line for line in script.splitlines() if "nohup setsid" in line)
  assert "'--config.note=a b'\\''c'" in launch_line


def test_tpu_run_needs_a_workdir(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "run", WORKDIR="")
  assert result.returncode == 2
  assert "set WORKDIR" in result.stderr and "gs://" in result.stderr


def test_tpu_logs(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "logs")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert "--worker=0" in printed.splitlines()[0]
  assert 'tail -n 100 -F "$log"' in printed
  result = _tpu(tmp_path, gcloud_stub, "logs", "--all", "--lines=7")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert "--worker=all" in printed.splitlines()[0]
  assert "tail -n 7" in printed


def test_tpu_stop(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "stop")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert "--worker=all" in printed.splitlines()[0]
  assert "kill -TERM $pids" in printed
  assert "saves a" in result.stdout and "checkpoint" in result.stdout
  assert "--kill" in result.stdout  # says how to force it
  assert '-lt 120 ]' in printed and "if [ 0 = 1 ]" in printed
  result = _tpu(tmp_path, gcloud_stub, "stop", "--kill", "--grace=30")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert '-lt 30 ]' in printed and "if [ 1 = 1 ]" in printed and "kill -KILL $all" in printed
  assert "SIGKILL" in result.stdout


def test_tpu_status(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "status")
  assert result.returncode == 0, result.stderr
  printed = _printed(result)
  assert "compute tpus tpu-vm describe test-tpu --zone=europe-west4-a" in printed
  assert "--worker=all" in printed


def test_tpu_delete(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "delete", "--yes")
  assert result.returncode == 0, result.stderr
  assert "compute tpus tpu-vm delete test-tpu --zone=europe-west4-a" in _printed(result)
  assert "--quiet" in _printed(result)


def test_tpu_delete_asks_first(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "delete", dry_run=False, input_text="n\n")
  assert result.returncode == 1
  assert "not deleted" in result.stdout
  assert _calls(gcloud_stub[1]) == []
  result = _tpu(tmp_path, gcloud_stub, "delete", dry_run=False)  # no answer at all
  assert result.returncode == 1 and _calls(gcloud_stub[1]) == []
  result = _tpu(tmp_path, gcloud_stub, "delete", dry_run=False, input_text="y\n")
  assert result.returncode == 0, result.stderr
  assert _calls(gcloud_stub[1]) == [[
      "compute", "tpus", "tpu-vm", "delete", "test-tpu", "--zone=europe-west4-a",
      "--project=my-project", "--quiet"]]


@pytest.mark.parametrize("args", [["bogus"], []], ids=["unknown", "none"])
def test_tpu_usage_on_a_bad_subcommand(tmp_path, gcloud_stub, args):
  result = _tpu(tmp_path, gcloud_stub, *args)
  assert result.returncode == 2
  assert "usage: launch/tpu_vm.sh" in result.stderr
  for name in ("create", "install", "run", "logs", "stop", "status", "delete", "DRY_RUN"):
    assert name in result.stderr


def test_tpu_help(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "help")
  assert result.returncode == 0
  assert "usage: launch/tpu_vm.sh" in result.stdout and "ACCELERATOR_TYPE" in result.stdout


@pytest.mark.parametrize("args", [["logs", "--bogus"], ["stop", "--grace=soon"],
                                  ["install", "extra"], ["delete", "--force"]])
def test_tpu_bad_options(tmp_path, gcloud_stub, args):
  result = _tpu(tmp_path, gcloud_stub, *args)
  assert result.returncode == 2
  assert result.stderr.startswith("error:")


def test_tpu_refuses_an_unsafe_remote_dir(tmp_path, gcloud_stub):
  result = _tpu(tmp_path, gcloud_stub, "install", REMOTE_DIR="../")
  assert result.returncode == 2 and "REMOTE_DIR" in result.stderr


# ---------------------------------------------------------------- local_two_process.sh

FAKE_PYTHON = """\
#!{python}
# Stands in for python: records its arguments; --process_id=I exits with FAKE_EXIT_I after
# FAKE_SLEEP_I seconds, or with 3 half a second after a SIGINT/SIGTERM (recording each).
import json, os, signal, sys, time
argv = sys.argv[1:]
if argv[:1] == ["-c"]:  # the free-port snippet: the real interpreter runs it
  os.execv(sys.executable, [sys.executable] + argv)
record = os.environ["FAKE_RECORD"]
pid = next(a.split("=", 1)[1] for a in argv if a.startswith("--process_id="))
signals = []
def on_signal(number, frame):
  signals.append(signal.Signals(number).name)
  with open(os.path.join(record, "signals_" + pid), "a") as f:
    f.write(signal.Signals(number).name + "\\n")
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
with open(os.path.join(record, "args_" + pid + ".json"), "w") as f:
  json.dump({{"argv": argv, "cwd": os.getcwd(), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS"),
             "pgid": os.getpgid(0)}}, f)
open(os.path.join(record, "started_" + pid), "w").close()
print("process", pid, "running", flush=True)
deadline = time.time() + float(os.environ.get("FAKE_SLEEP_" + pid, "0"))
while time.time() < deadline:
  time.sleep(0.05)
  if signals:
    time.sleep(0.5)  # a second signal would be recorded meanwhile
    sys.exit(3)
sys.exit(int(os.environ.get("FAKE_EXIT_" + pid, "0")))
"""


@pytest.fixture
def fake_python(tmp_path):
  record = tmp_path / "record"
  record.mkdir()
  stub = _executable(tmp_path / "python", FAKE_PYTHON.format(python=sys.executable))
  return stub, record


def _local_env(tmp_path, fake_python, **env):
  stub, record = fake_python
  full = _clean_env(("PORT", "LOG_DIR", "PYTHON", "GRACE", "QUIET", "JAX_PLATFORMS"))
  full.update({"PYTHON": str(stub), "FAKE_RECORD": str(record),
               "LOG_DIR": str(tmp_path / "logs"), "QUIET": "1"})
  full.update(env)
  return full


def _local(tmp_path, fake_python, *args, **env):
  return subprocess.run([str(LOCAL), *args], env=_local_env(tmp_path, fake_python, **env),
                        capture_output=True, text=True, timeout=60, check=False)


def _recorded_args(record, pid):
  return json.loads((record / f"args_{pid}.json").read_text())


def test_local_passes_arguments_to_both(tmp_path, fake_python):
  result = _local(tmp_path, fake_python, "--config=configs/synthetic.py:15-1",
                  "--workdir=runs/two process", PORT="12345")
  assert result.returncode == 0, result.stdout + result.stderr
  record = fake_python[1]
  for pid in ("0", "1"):
    recorded = _recorded_args(record, pid)
    assert recorded["argv"] == [
        "-m", "gsc_jax.main", "--coordinator_address=127.0.0.1:12345", "--num_processes=2",
        f"--process_id={pid}", "--config=configs/synthetic.py:15-1",
        "--workdir=runs/two process"]
    assert recorded["cwd"] == str(ROOT)  # run from the repository root
    assert recorded["JAX_PLATFORMS"] == "cpu"
    log = (tmp_path / "logs" / f"process_{pid}.log").read_text()
    assert f"process {pid} running" in log and f"--process_id={pid}" in log


def test_local_shows_process_0_output(tmp_path, fake_python):
  result = _local(tmp_path, fake_python, QUIET="0", FAKE_SLEEP_0="0.5")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "process 0 running" in result.stdout  # process 0's output, from its log
  assert "process 1 running" not in result.stdout


def test_local_picks_a_free_port(tmp_path, fake_python):
  result = _local(tmp_path, fake_python)
  assert result.returncode == 0, result.stdout + result.stderr
  ports = {_recorded_args(fake_python[1], pid)["argv"][2] for pid in ("0", "1")}
  (port,) = ports  # the same for both
  assert re.fullmatch(r"--coordinator_address=127\.0\.0\.1:\d+", port)


def test_local_returns_the_first_nonzero_code(tmp_path, fake_python):
  # Process 1 fails first (5); process 0 fails later with another code (7).
  result = _local(tmp_path, fake_python, FAKE_EXIT_1="5", FAKE_SLEEP_0="1.0", FAKE_EXIT_0="7")
  assert result.returncode == 5, result.stdout + result.stderr
  assert "process 1 exited with code 5" in result.stdout
  assert "process 0 exited with code 7" in result.stdout


def test_local_zero_and_nonzero(tmp_path, fake_python):
  result = _local(tmp_path, fake_python, FAKE_EXIT_0="2")
  assert result.returncode == 2


def test_local_kills_the_other_process_after_a_failure(tmp_path, fake_python):
  start = time.time()
  result = _local(tmp_path, fake_python, FAKE_EXIT_0="4", FAKE_SLEEP_1="30", GRACE="1")
  assert result.returncode == 4, result.stdout + result.stderr
  assert time.time() - start < 15
  assert "killing it" in result.stderr


# Starts the script with SIGINT and SIGTERM as in a terminal: a test run started in the
# background of a non-interactive shell has SIGINT ignored, which its children inherit, and
# a shell cannot trap a signal ignored on entry. (exec keeps the default dispositions.)
WITH_DEFAULT_SIGNALS = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "kill"])
def test_local_forwards_a_signal_once_to_both(tmp_path, fake_python, sig, to_group):
  """Ctrl-C in a terminal signals the whole foreground process group (to_group): each
  process must still get the signal once, from the script, as a second one stops a run
  without its checkpoint. So the processes must not be in the script's process group
  (two signals close together can reach a Python handler as one, so counting them alone
  would not show it)."""
  record = fake_python[1]
  proc = subprocess.Popen(
      [sys.executable, "-c", WITH_DEFAULT_SIGNALS, str(LOCAL)],
      env=_local_env(tmp_path, fake_python, FAKE_SLEEP_0="30", FAKE_SLEEP_1="30"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.time() + 30
    while not all((record / f"started_{p}").exists() for p in "01"):
      assert time.time() < deadline and proc.poll() is None, "both processes start"
      time.sleep(0.05)
    if to_group:
      os.killpg(proc.pid, sig)
    else:
      proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 3, err
  for pid in "01":
    assert (record / f"signals_{pid}").read_text().split() == [sig.name]
    assert _recorded_args(record, pid)["pgid"] != proc.pid  # proc leads its own group
  assert "saves a checkpoint" in err


def test_local_refuses_its_own_flags(tmp_path, fake_python):
  result = _local(tmp_path, fake_python, "--process_id=3")
  assert result.returncode == 2 and "set by this script" in result.stderr


# ------------------------------------------------------------------- slurm_gpu.sbatch

def test_slurm_directives():
  text = SLURM.read_text()
  for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--requeue",
                    "--signal=TERM@120"):
    assert f"#SBATCH {directive}" in text
  assert "jax[cuda12]==$jax_version" in text
  assert "--distributed" in text


@pytest.fixture
def slurm_stubs(tmp_path):
  """srun and scontrol that record their arguments; srun exits with FAKE_SRUN_EXIT."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("srun", "scontrol"):
    _executable(bin_dir / name, textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        with open(os.path.join({str(tmp_path)!r}, "{name}.jsonl"), "a") as f:
          f.write(json.dumps({{"argv": sys.argv[1:],
                              "ids": os.environ.get("JAX_LOCAL_DEVICE_IDS")}}) + "\\n")
        sys.exit(int(os.environ.get("FAKE_SRUN_EXIT", "0")) if "{name}" == "srun" else 0)
        """))
  return bin_dir


def _slurm(tmp_path, bin_dir, *args, **env):
  full = _clean_env(SLURM_SETTINGS + ("SLURM_NTASKS_PER_NODE", "SLURM_GPUS_PER_NODE"))
  full.update({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242",
               "SLURM_GPUS_ON_NODE": "8", "PYTHON": "/opt/env/bin/python",
               "WORKDIR": "/shared/runs/x"})
  full.update(env)
  result = subprocess.run(["bash", str(SLURM), *args], env=full, capture_output=True,
                          text=True, timeout=60, check=False)
  def read(name):
    path = tmp_path / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  return result, read("srun"), read("scontrol")


def test_slurm_runs_distributed_and_finishes(tmp_path, slurm_stubs):
  result, srun, scontrol = _slurm(tmp_path, slurm_stubs, "--config.optim.batch_size=32")
  assert result.returncode == 0, result.stdout + result.stderr
  (call,) = srun
  assert call["argv"] == ["--kill-on-bad-exit=0", "/opt/env/bin/python", "-m", "gsc_jax.main",
                          "--distributed", "--config=configs/synthetic.py:15-1",
                          "--workdir=/shared/runs/x", "--config.optim.batch_size=32"]
  assert call["ids"] == "0,1,2,3,4,5,6,7"  # one process drives the node's 8 GPUs
  assert scontrol == []


def test_slurm_requeues_a_stopped_run(tmp_path, slurm_stubs):
  result, _, scontrol = _slurm(tmp_path, slurm_stubs, FAKE_SRUN_EXIT="3")
  assert result.returncode == 3
  assert scontrol == [{"argv": ["requeue", "4242"], "ids": "0,1,2,3,4,5,6,7"}]


def test_slurm_stops_requeueing(tmp_path, slurm_stubs):
  result, _, scontrol = _slurm(tmp_path, slurm_stubs, FAKE_SRUN_EXIT="3",
                               SLURM_RESTART_COUNT="20")
  assert result.returncode == 3 and scontrol == []


def test_slurm_failure_is_not_requeued(tmp_path, slurm_stubs):
  result, _, scontrol = _slurm(tmp_path, slurm_stubs, FAKE_SRUN_EXIT="4")
  assert result.returncode == 4 and scontrol == []


def test_slurm_needs_the_gpu_count(tmp_path, slurm_stubs):
  _executable(slurm_stubs / "nvidia-smi", "#!/bin/sh\nexit 9\n")  # no GPU driver
  result, srun, _ = _slurm(tmp_path, slurm_stubs, SLURM_GPUS_ON_NODE="")
  assert result.returncode == 2 and "JAX_LOCAL_DEVICE_IDS" in result.stderr and srun == []


def test_slurm_one_process_per_gpu(tmp_path, slurm_stubs):
  _, srun, _ = _slurm(tmp_path, slurm_stubs, SLURM_NTASKS_PER_NODE="8")
  assert srun[0]["ids"] is None  # JAX's SLURM detection gives process i its GPU i
