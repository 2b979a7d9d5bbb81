"""Train (or evaluate) on several GPU hosts: one `pulse-jax train` (`--job eval`: `pulse-jax eval`) process per
host, joined into one JAX process group.

  python -m launch.gpu_cluster sbatch --nodes 4 --partition gpu \\
      -- --config configs/pulse_7b.py --workdir /shared/runs/pulse_7b
  python -m launch.gpu_cluster ssh --hosts gpu1,gpu2,gpu3,gpu4 --install \\
      -- --config configs/pulse_7b.py --workdir /shared/runs/pulse_7b

`--dry-run` prints the exact commands (the batch script as a heredoc) instead of running them. Everything
after `--` is passed to `pulse-jax train` (or `eval`) unchanged. Each process drives all GPUs of its host; the processes
find each other through the variables pulse_jax.parallel.initialize_distributed reads: JAX_COORDINATOR_ADDRESS
(host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. The checkpoint workdir must be on a filesystem
every host sees; an evaluation's workdir is process 0's, where it alone writes.

sbatch writes a batch script (one task per node, the coordinator = the job's first node) and submits it; the
checkout and its venv (`pip install -e '.[gpu]'`) must already be at --repo-dir on the nodes. ssh starts the
processes detached, host i as process i, each appending to --log in the checkout; with --install it first
copies this checkout to every host (rsync, skipping what .gitignore lists) and creates the venv there.
"""

import argparse
import shlex
import sys

from launch.commands import (JOBS, REPO_ROOT, Runner, Step, WriteFile, detached, execute, parse_env,
                             parse_launcher_args, pulse_jax_command, run_subprocess, venv_install)
from pulse_jax.parallel import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

DEFAULT_PORT = 8476


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--repo-dir", default=str(REPO_ROOT),
                      help="the checkout's path on the hosts (default: this checkout's path)")
  common.add_argument("--port", type=int, default=DEFAULT_PORT, help="coordinator port on process 0's host")
  common.add_argument("--job", choices=JOBS, default="train", help="the pulse-jax command each host runs")
  common.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                      help="environment for `pulse-jax JOB` (repeatable)")
  common.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
  modes = parser.add_subparsers(dest="mode", required=True)

  slurm = modes.add_parser("sbatch", parents=[common], help="write a SLURM batch script and submit it")
  slurm.add_argument("--nodes", type=int, required=True)
  slurm.add_argument("--gpus-per-node", type=int, default=8)
  slurm.add_argument("--partition")
  slurm.add_argument("--account")
  slurm.add_argument("--time", help="wall-time limit, e.g. 24:00:00")
  slurm.add_argument("--job-name", default="pulse-jax")
  slurm.add_argument("--script", help="where to write the batch script (default: JOB_NAME.sbatch)")

  ssh = modes.add_parser("ssh", parents=[common], help="start one process per host over ssh")
  ssh.add_argument("--hosts", required=True, help="comma-separated [user@]host list; the first is process 0")
  ssh.add_argument("--coordinator", help="process 0's address as the others reach it (default: the first host)")
  ssh.add_argument("--install", action="store_true", help="rsync this checkout to each host and install it first")
  ssh.add_argument("--python", default="python3.11", help="interpreter for the hosts' venv (with --install)")
  ssh.add_argument("--log", help="log file in the checkout on each host (default: JOB.log)")


def sbatch_script(args: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> str:
  """A batch script that runs one `pulse-jax JOB` task per node, process id = SLURM_PROCID."""
  options = {"job-name": args.job_name, "nodes": args.nodes, "ntasks-per-node": 1,
             "gpus-per-node": args.gpus_per_node, "partition": args.partition, "account": args.account,
             "time": args.time, "output": "%x-%j.out"}
  task = f"export {PROCESS_ID_ENV}=$SLURM_PROCID && exec {pulse_jax_command(args.job, train_args, {})}"
  lines = ["#!/bin/bash"]
  lines += [f"#SBATCH --{name}={value}" for name, value in options.items() if value is not None]
  lines += ["set -euo pipefail",
            f"cd {shlex.quote(args.repo_dir)}",
            "# Process 0 runs on the job's first node and coordinates; see pulse_jax.parallel.initialize_distributed.",
            f'export {COORDINATOR_ENV}="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{args.port}"',
            f'export {NUM_PROCESSES_ENV}="$SLURM_NNODES"']
  lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
  lines += [f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}"]
  return "\n".join(lines) + "\n"


def sbatch_steps(args: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> list[Step]:
  script = args.script or f"{args.job_name}.sbatch"
  return [WriteFile(script, sbatch_script(args, train_args, env)), ("sbatch", script)]


def ssh_steps(args: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> list[Step]:
  hosts = [host for host in args.hosts.split(",") if host]
  coordinator = args.coordinator or hosts[0].rpartition("@")[2]
  repo_dir = shlex.quote(args.repo_dir)
  steps = []
  if args.install:
    for host in hosts:
      steps += [("rsync", "-az", "--exclude=.git", "--filter=:- .gitignore", f"{REPO_ROOT}/",
                 f"{host}:{args.repo_dir}/"),
                ("ssh", host, f"cd {repo_dir} && {venv_install(args.python, 'gpu')}")]
  group = {COORDINATOR_ENV: f"{coordinator}:{args.port}", NUM_PROCESSES_ENV: str(len(hosts))}
  for process_id, host in enumerate(hosts):
    command = pulse_jax_command(args.job, train_args, {**env, **group, PROCESS_ID_ENV: str(process_id)})
    steps.append(("ssh", host, f"cd {repo_dir} && {detached(command, args.log or f'{args.job}.log')}"))
  return steps


def main(argv: list[str] | None = None, run: Runner = run_subprocess) -> int:
  """Command-line entry; `run` replaces subprocess execution (tests inject a recorder)."""
  parser, args, train_args = parse_launcher_args(argv, "python -m launch.gpu_cluster", __doc__, add_arguments)
  if not train_args:
    parser.error(f"give the `pulse-jax {args.job}` arguments after `--`")
  try:
    env = parse_env(args.env)
  except ValueError as e:
    parser.error(str(e))
  steps = (sbatch_steps if args.mode == "sbatch" else ssh_steps)(args, train_args, env)
  return execute(steps, dry_run=args.dry_run, run=run)


if __name__ == "__main__":
  sys.exit(main())
