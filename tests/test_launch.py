"""Launchers: the printed commands are the executed ones, and the shell they carry really works.

No network and no cloud: commands are recorded by a fake runner, and the remote / batch-script shell is run
here with bash against fake `pulse-jax`, `gcloud`, `sbatch`, `scontrol` and `srun` programs that record what
they were given.
"""

import json
import os
import shlex
import stat
import subprocess
import sys
import time

import pytest

from launch import gpu_cluster, tpu_pod
from launch.commands import REPO_ROOT

# Arguments and environment values that break naive quoting: spaces, a quote, a $ that must not expand.
TRAIN_ARGS = ["--config", "configs/pulse_7b.py", "--workdir", "gs://bucket/run 1", "--config.train.note=it's $HOME"]
ENV = {"TFDS_DATA_DIR": "gs://bucket/tf ds", "QUOTED": "a'b"}
ENV_ARGS = [f"--env={name}={value}" for name, value in ENV.items()]
GROUP_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _write_program(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _fake_pulse_jax(venv_dir, out_dir):
  """A `.venv/bin/pulse-jax` that writes its arguments and environment to out_dir/<process id>.json."""
  _write_program(venv_dir / "bin" / "pulse-jax", f"""#!{sys.executable}
import json, os, sys
names = {sorted([*ENV, *GROUP_ENV])!r}
record = {{"argv": sys.argv[1:], "env": {{n: os.environ[n] for n in names if n in os.environ}}}}
path = os.path.join({str(out_dir)!r}, os.environ.get("JAX_PROCESS_ID", "single") + ".json")
with open(path + ".tmp", "w") as f:
  json.dump(record, f)
os.rename(path + ".tmp", path)
""")


def _wait_for(path, timeout_s=20.0):
  deadline = time.monotonic() + timeout_s
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.05)
  return json.loads(path.read_text())


def _run_launcher(main, argv):
  recorded = []
  assert main(argv, run=recorded.append) == 0
  return recorded


def _dry_run_lines(main, argv, capsys):
  cut = argv.index("--")  # options go before the train arguments
  assert main([*argv[:cut], "--dry-run", *argv[cut:]]) == 0
  return capsys.readouterr().out.splitlines()


def _tpu_argv(*actions, extra=()):
  return [*actions, "--name", "pulse", "--zone", "us-east5-a", "--project", "proj", *extra, *ENV_ARGS,
          "--", *TRAIN_ARGS]


def test_tpu_dry_run_prints_exactly_what_runs(capsys):
  argv = _tpu_argv("create", "install", "run", "logs", "delete",
                   extra=["--accelerator-type", "v5e-256", "--queued", "--spot"])
  recorded = _run_launcher(tpu_pod.main, argv)
  capsys.readouterr()
  printed = _dry_run_lines(tpu_pod.main, argv, capsys)
  assert [shlex.split(line) for line in printed] == [list(command) for command in recorded]

  create, wait, archive, scp, install, run, logs, delete = recorded
  assert create[:5] == ("gcloud", "compute", "tpus", "queued-resources", "create")
  assert {"--accelerator-type=v5litepod-256", "--runtime-version=v2-alpha-tpuv5-lite", "--node-id=pulse",
          "--zone=us-east5-a", "--project=proj", "--spot"} <= set(create)
  assert wait[:2] == ("bash", "-c")
  archive_path = archive[archive.index("archive") + 2].removeprefix("--output=")
  assert archive[-1] == "HEAD" and scp[5:7] == (archive_path, f"pulse:{tpu_pod.REMOTE_ARCHIVE}")
  assert "--worker=all" in scp and "--worker=all" in install and "--worker=all" in run
  assert f"tar -xzf {tpu_pod.REMOTE_ARCHIVE}" in install[-1] and "-e '.[tpu]'" in install[-1]
  assert "--worker=0" in logs and logs[-1].endswith(f"{tpu_pod.REMOTE_DIR}/train.log")
  assert delete[3:5] == ("queued-resources", "delete") and "--force" in delete


@pytest.mark.parametrize("job", ["train", "eval"])
def test_tpu_run_command_starts_the_job_detached_with_arguments_intact(tmp_path, job):
  (run, logs) = _run_launcher(tpu_pod.main, _tpu_argv("run", "logs", extra=["--job", job]))
  assert run[run.index("--command") - 1] == "--worker=all"
  out = tmp_path / "out"
  out.mkdir()
  _fake_pulse_jax(tmp_path / tpu_pod.REMOTE_DIR / ".venv", out)
  subprocess.run(["bash", "-c", run[-1]], cwd=tmp_path, check=True, timeout=20)  # what each worker runs
  record = _wait_for(out / "single.json")
  assert record == {"argv": [job, *TRAIN_ARGS], "env": ENV}
  assert (tmp_path / tpu_pod.REMOTE_DIR / f"{job}.log").exists()
  assert logs[-1].endswith(f"{tpu_pod.REMOTE_DIR}/{job}.log")


def test_tpu_queued_resource_wait_loop(tmp_path, monkeypatch):
  monkeypatch.setattr(tpu_pod, "QUEUE_POLL_SECONDS", 0)
  steps = tpu_pod.TpuPod("pulse", "zone-a", None).create("v5p-64", "v2-alpha-tpuv5", queued=True, spot=False)
  wait = steps[1]
  bin_dir = tmp_path / "bin"
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  for states, status in ((["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"], 0), (["PROVISIONING", "FAILED"], 1)):
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    # Each `describe` prints the next state in the list.
    _write_program(bin_dir / "gcloud", f"""#!/bin/bash
head -n 1 {tmp_path}/states; sed -i 1d {tmp_path}/states
""")
    result = subprocess.run(wait, env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == status
    assert result.stdout.splitlines()[-1] == f"queued resource pulse: {states[-1]}"


def test_tpu_install_from_git_and_plain_delete():
  (install,) = _run_launcher(tpu_pod.main, _tpu_argv("install", extra=["--git-url", "https://example.com/p.git",
                                                                       "--ref", "v1.0"]))
  remote = install[-1]
  assert "git clone -q https://example.com/p.git pulse-jax" in remote and "fetch -q origin v1.0" in remote
  assert "checkout -q --force FETCH_HEAD" in remote
  (delete,) = _run_launcher(tpu_pod.main, _tpu_argv("delete"))
  assert delete[:5] == ("gcloud", "compute", "tpus", "tpu-vm", "delete") and "--quiet" in delete


def test_tpu_multislice_reaches_every_node_and_needs_a_dcn_mesh(capsys):
  argv = _tpu_argv("create", "install", "run", "logs", "delete",
                   extra=["--accelerator-type", "v5p-64", "--queued", "--num-slices", "2", "--node", "1"])
  argv.append("--config.mesh.dcn=(2,1,1)")  # after `--`: a train argument
  create, wait, archive, scp, install, run, logs, delete = _run_launcher(tpu_pod.main, argv)
  assert {"--node-count=2", "--node-prefix=pulse"} <= set(create) and not any("--node-id" in a for a in create)
  for step, verb in ((scp, "scp"), (install, "ssh"), (run, "ssh")):
    assert step[:5] == ("gcloud", "compute", "tpus", "queued-resources", verb)
    assert {"--node=all", "--worker=all"} <= set(step)
  assert {"--node=1", "--worker=0"} <= set(logs)
  assert "--config.mesh.dcn=(2,1,1)" in run[-1]
  assert delete[3:5] == ("queued-resources", "delete")
  for train_args, create_args in (([], ["--queued"]), (["--config.mesh.dcn=(1,1,1)"], ["--queued"]),
                                   (["--config.mesh.dcn=(2,1,1)"], [])):
    with pytest.raises(SystemExit):  # without a DCN mesh over both slices each would train alone; no queue: no slices
      tpu_pod.main([*_tpu_argv("run", extra=[*create_args, "--num-slices", "2"]), *train_args], run=pytest.fail)
    assert ("needs --config.mesh.dcn=(2,1,1)" if create_args else "needs --queued") in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["create", "--name", "x", "--zone", "z"],                                # no accelerator type
    ["create", "--name", "x", "--zone", "z", "--accelerator-type", "v3-8"],  # no default runtime
    ["run", "--name", "x", "--zone", "z"],                                   # no train arguments
    ["run", "--name", "x", "--zone", "z", "--env", "NOEQUALS", "--", "--config", "c.py"],
])
def test_tpu_refuses_incomplete_requests(argv):
  with pytest.raises(SystemExit) as exit_info:
    tpu_pod.main(argv, run=pytest.fail)
  assert exit_info.value.code == 2


def test_execution_stops_at_the_first_failing_command(capsys):
  calls = []

  def run(command):
    calls.append(command)
    if len(calls) == 2:
      raise subprocess.CalledProcessError(3, command)

  argv = _tpu_argv("create", "install", extra=["--accelerator-type", "v5p-64"])
  assert tpu_pod.main(argv, run=run) == 3
  assert len(calls) == 2  # create ran, archive failed, scp and the remote install never ran
  assert "exit status 3" in capsys.readouterr().err


def test_sbatch_dry_run_pasted_into_bash_runs_one_process_per_node(tmp_path, capsys):
  repo, out, bin_dir = tmp_path / "repo", tmp_path / "out", tmp_path / "bin"
  out.mkdir()
  _fake_pulse_jax(repo / ".venv", out)
  # sbatch runs the script as a 2-node job; scontrol expands the node list; srun starts one task per node.
  _write_program(bin_dir / "sbatch", '#!/bin/bash\nSLURM_JOB_NODELIST="node[1-2]" SLURM_NNODES=2 bash "$1"\n')
  _write_program(bin_dir / "scontrol", '#!/bin/bash\n[ "$3" = "node[1-2]" ] && printf "node1\\nnode2\\n"\n')
  _write_program(bin_dir / "srun", '#!/bin/bash\nshift\nfor ((i = 0; i < SLURM_NNODES; i++)); do '
                                   'SLURM_PROCID=$i "$@"; done\n')
  argv = ["sbatch", "--nodes", "2", "--partition", "gpu", "--time", "1:00:00", "--repo-dir", str(repo),
          "--script", str(tmp_path / "job.sbatch"), *ENV_ARGS, "--", *TRAIN_ARGS]
  printed = "\n".join(_dry_run_lines(gpu_cluster.main, argv, capsys)) + "\n"
  assert printed.splitlines()[-1] == shlex.join(["sbatch", str(tmp_path / "job.sbatch")])
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  subprocess.run(["bash", "-c", printed], cwd=tmp_path, env=env, check=True, timeout=30)

  script = (tmp_path / "job.sbatch").read_text()
  assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
          "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00"} <= set(script.splitlines())
  for process_id in range(2):
    record = json.loads((out / f"{process_id}.json").read_text())
    assert record["argv"] == ["train", *TRAIN_ARGS]
    assert record["env"] == {**ENV, "JAX_COORDINATOR_ADDRESS": f"node1:{gpu_cluster.DEFAULT_PORT}",
                             "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(process_id)}


def test_sbatch_executing_writes_the_script_and_submits_it(tmp_path):
  script = tmp_path / "job.sbatch"
  recorded = _run_launcher(gpu_cluster.main, ["sbatch", "--nodes", "4", "--script", str(script), "--", *TRAIN_ARGS])
  assert recorded == [("sbatch", str(script))]
  assert script.read_text().startswith("#!/bin/bash\n#SBATCH --job-name=pulse-jax\n#SBATCH --nodes=4\n")


@pytest.mark.parametrize("job", ["train", "eval"])
def test_ssh_starts_process_i_on_host_i(tmp_path, capsys, job):
  repo, out = tmp_path / "repo", tmp_path / "out"
  out.mkdir()
  _fake_pulse_jax(repo / ".venv", out)
  hosts = ["me@gpu1", "gpu2", "gpu3"]
  argv = ["ssh", "--hosts", ",".join(hosts), "--port", "9999", "--repo-dir", str(repo), "--install", "--job", job,
          *ENV_ARGS, "--", *TRAIN_ARGS]
  recorded = _run_launcher(gpu_cluster.main, argv)
  capsys.readouterr()
  assert [shlex.split(line) for line in _dry_run_lines(gpu_cluster.main, argv, capsys)] == list(map(list, recorded))

  installs, starts = recorded[:2 * len(hosts)], recorded[2 * len(hosts):]
  assert [step[0] for step in installs] == ["rsync", "ssh"] * len(hosts)
  assert installs[0][-2:] == (f"{REPO_ROOT}/", f"me@gpu1:{repo}/") and "-e '.[gpu]'" in installs[1][-1]
  assert [step[:2] for step in starts] == [("ssh", host) for host in hosts]
  for process_id, (_, _, remote) in enumerate(starts):
    subprocess.run(["bash", "-c", remote], check=True, timeout=20)  # what host `process_id` runs
    record = _wait_for(out / f"{process_id}.json")
    assert record == {"argv": [job, *TRAIN_ARGS], "env": {**ENV, "JAX_COORDINATOR_ADDRESS": "gpu1:9999",
                                                "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": str(process_id)}}
  assert (repo / f"{job}.log").exists()


def test_gpu_launcher_needs_train_arguments():
  with pytest.raises(SystemExit) as exit_info:
    gpu_cluster.main(["ssh", "--hosts", "a,b"], run=pytest.fail)
  assert exit_info.value.code == 2
