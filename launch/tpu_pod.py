"""Train (or evaluate) on a Cloud TPU pod slice with gcloud: create it, install the project on every worker,
start `pulse-jax train` (`--job eval`: `pulse-jax eval`) on all workers, follow the log, delete it.

  python -m launch.tpu_pod create install run --name pulse --zone us-east5-a --accelerator-type v5p-64 \\
      -- --config configs/pulse_7b.py --workdir gs://BUCKET/runs/pulse_7b
  python -m launch.tpu_pod logs --name pulse --zone us-east5-a
  python -m launch.tpu_pod delete --name pulse --zone us-east5-a

Actions run in the order given; `--dry-run` prints the exact commands instead. Everything after `--` is passed
to `pulse-jax train` (or `pulse-jax eval`) unchanged, its output going to train.log (eval.log) in the checkout.
On a TPU VM JAX finds the other workers by itself, so every worker runs the same command. The checkpoint workdir
must be a gs:// path (or another filesystem all workers share); an evaluation's workdir is worker 0's own folder,
where it alone writes the predictions and the report.

Several slices (Multislice, data parallel over DCN): `--num-slices N` with `--queued` asks for one queued resource
of N nodes (NAME-0 ... NAME-<N-1>), installs and runs on every worker of every node (gcloud's queued-resources
ssh / scp with --node=all), and needs `--config.mesh.dcn=(N,1,1)` among the train arguments; JAX finds the slices
by itself, as it finds the workers.

install copies the committed tree of this checkout (`git archive REF`, default HEAD) to every worker, or, with
--git-url, clones that repository there; then it creates a Python 3.11 venv (installing python3.11 with apt if
the image lacks it) and installs the project with the `tpu` extra.
"""

import argparse
import ast
import math
import shlex
import sys

from launch.commands import (JOBS, REPO_ROOT, Runner, Step, detached, execute, parse_env,
                             parse_launcher_args, pulse_jax_command, run_subprocess, venv_install)

ACTIONS = ("create", "install", "run", "logs", "delete")
REMOTE_DIR = "pulse-jax"  # under the worker's home directory, where gcloud ssh starts
REMOTE_ARCHIVE = "pulse-jax.tar.gz"
QUEUE_POLL_SECONDS = 30

# Default TPU software version per generation (cloud.google.com/tpu/docs/runtimes), keyed by the accelerator
# type's prefix as gcloud spells it.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}


def gcloud_accelerator_type(name: str) -> str:
  """gcloud's spelling of an accelerator type: v5e-N is called v5litepod-N; the others are unchanged."""
  return "v5litepod-" + name.removeprefix("v5e-") if name.startswith("v5e-") else name


def runtime_version(accelerator_type: str) -> str:
  generation = accelerator_type.rsplit("-", 1)[0]
  if generation not in RUNTIME_VERSIONS:
    raise ValueError(f"no default runtime version for accelerator type {accelerator_type!r}; "
                     f"pass --runtime-version (known generations: {', '.join(RUNTIME_VERSIONS)})")
  return RUNTIME_VERSIONS[generation]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("actions", nargs="+", choices=ACTIONS, metavar="ACTION",
                      help=f"one or more of {', '.join(ACTIONS)}, run in the order given")
  parser.add_argument("--name", required=True, help="TPU (and queued-resource) name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
  create = parser.add_argument_group("create / delete")
  create.add_argument("--accelerator-type", help="e.g. v5p-64, v5e-256 (= v5litepod-256), v4-64, v6e-256")
  create.add_argument("--runtime-version", help="TPU software version (default: by generation)")
  create.add_argument("--queued", action="store_true",
                      help="go through a queued resource (waits until it is ACTIVE); needed for large slices")
  create.add_argument("--spot", action="store_true", help="spot capacity (preemptible: training resumes)")
  parser.add_argument("--num-slices", type=int, default=1,
                      help="slices of --accelerator-type joined over DCN (Multislice; needs --queued)")
  install = parser.add_argument_group("install")
  install.add_argument("--git-url", help="clone this repository on the workers instead of copying this checkout")
  install.add_argument("--ref", default="HEAD", help="commit, branch or tag to install (default: HEAD)")
  install.add_argument("--python", default="python3.11", help="interpreter for the workers' venv")
  run = parser.add_argument_group("run / logs")
  run.add_argument("--job", choices=JOBS, default="train",
                   help="the pulse-jax command `run` starts and whose log (JOB.log) `logs` follows")
  run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for `pulse-jax JOB` (repeatable), e.g. TFDS_DATA_DIR=gs://BUCKET/tfds")
  run.add_argument("--worker", default="0", help="worker whose log `logs` follows (default: 0)")
  run.add_argument("--node", default="0", help="with --num-slices: the slice whose worker `logs` follows")


class TpuPod:
  """The gcloud commands for one named TPU slice in one zone, or for a queued resource of `num_slices` slices."""

  def __init__(self, name: str, zone: str, project: str | None, num_slices: int = 1):
    self.name, self.num_slices = name, num_slices
    self.location = (f"--zone={zone}",) + ((f"--project={project}",) if project else ())

  def create(self, accelerator_type: str, version: str, *, queued: bool, spot: bool) -> list[Step]:
    spot_flag = ("--spot",) if spot else ()
    if not queued:
      return [("gcloud", "compute", "tpus", "tpu-vm", "create", self.name, *self.location,
               f"--accelerator-type={accelerator_type}", f"--version={version}", *spot_flag)]
    describe = shlex.join(("gcloud", "compute", "tpus", "queued-resources", "describe", self.name, *self.location,
                           "--format", "value(state.state)"))
    wait = (f'while true; do state=$({describe}); echo "queued resource {self.name}: $state"; '
            f'case "$state" in ACTIVE) exit 0;; FAILED|SUSPENDED) exit 1;; esac; '
            f'sleep {QUEUE_POLL_SECONDS}; done')
    nodes = ((f"--node-id={self.name}",) if self.num_slices == 1 else
             (f"--node-count={self.num_slices}", f"--node-prefix={self.name}"))
    return [("gcloud", "compute", "tpus", "queued-resources", "create", self.name, *self.location, *nodes,
             f"--accelerator-type={accelerator_type}", f"--runtime-version={version}", *spot_flag),
            ("bash", "-c", wait)]

  def _on_workers(self, verb: str, *args: str, worker: str, node: str) -> Step:
    """gcloud `verb` (ssh, scp) on the slice's workers; over a Multislice queued resource, on its nodes too."""
    if self.num_slices == 1:
      return ("gcloud", "compute", "tpus", "tpu-vm", verb, *args, *self.location, f"--worker={worker}")
    return ("gcloud", "compute", "tpus", "queued-resources", verb, *args, *self.location, f"--node={node}",
            f"--worker={worker}")

  def ssh(self, command: str, worker: str = "all", node: str = "all") -> Step:
    return (*self._on_workers("ssh", self.name, worker=worker, node=node), "--command", command)

  def install(self, *, git_url: str | None, ref: str, python: str) -> list[Step]:
    ensure_python = (f"(command -v {shlex.quote(python)} > /dev/null || (sudo apt-get update -q"
                     f" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q {shlex.quote(python)}"
                     f" {shlex.quote(python + '-venv')}))")
    setup = f"cd {REMOTE_DIR} && {venv_install(python, 'tpu')}"
    if git_url:
      fetch = (f"(test -d {REMOTE_DIR}/.git || git clone -q {shlex.quote(git_url)} {REMOTE_DIR})"
               f" && git -C {REMOTE_DIR} fetch -q origin {shlex.quote(ref)}"
               f" && git -C {REMOTE_DIR} checkout -q --force FETCH_HEAD")
      return [self.ssh(f"{ensure_python} && {fetch} && {setup}")]
    local_archive = f"/tmp/pulse-jax-{self.name}.tar.gz"
    unpack = f"mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR}"
    return [("git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz", f"--output={local_archive}", ref),
            self._on_workers("scp", local_archive, f"{self.name}:{REMOTE_ARCHIVE}", worker="all", node="all"),
            self.ssh(f"{ensure_python} && {unpack} && {setup}")]

  def run(self, job: str, job_args: list[str], env: dict[str, str]) -> list[Step]:
    return [self.ssh(f"cd {REMOTE_DIR} && {detached(pulse_jax_command(job, job_args, env), log_file(job))}")]

  def logs(self, job: str, worker: str, node: str = "0") -> list[Step]:
    return [self.ssh(f"tail -n 200 -F {REMOTE_DIR}/{log_file(job)}", worker=worker, node=node)]

  def delete(self, *, queued: bool) -> list[Step]:
    if queued:  # --force also deletes the TPU the queued resource holds
      return [("gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self.location, "--force",
               "--quiet")]
    return [("gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self.location, "--quiet")]


def log_file(job: str) -> str:
  """Where `run` appends a job's output, inside REMOTE_DIR on every worker."""
  return f"{job}.log"


def dcn_slices(train_args: list[str]) -> int | None:
  """The slices the train arguments' --config.mesh.dcn=(a,b,c) spans (a * b * c), or None when not given or not a
  tuple of ints."""
  for arg in train_args:
    if arg.startswith("--config.mesh.dcn="):
      try:
        shape = ast.literal_eval(arg.split("=", 1)[1])
        return math.prod(shape) if all(isinstance(n, int) for n in shape) else None
      except (ValueError, SyntaxError, TypeError):
        return None
  return None


def launch_steps(args: argparse.Namespace, train_args: list[str]) -> list[Step]:
  """Every step of the requested actions, in order; raises ValueError for a missing option."""
  if args.num_slices < 1 or (args.num_slices > 1 and not args.queued):
    raise ValueError("--num-slices N > 1 needs --queued (Multislice runs on a queued resource)"
                     if args.num_slices > 1 else "--num-slices must be >= 1")
  pod = TpuPod(args.name, args.zone, args.project, args.num_slices)
  steps = []
  for action in args.actions:
    if action == "create":
      if not args.accelerator_type:
        raise ValueError("create needs --accelerator-type")
      accelerator_type = gcloud_accelerator_type(args.accelerator_type)
      version = args.runtime_version or runtime_version(accelerator_type)
      steps += pod.create(accelerator_type, version, queued=args.queued, spot=args.spot)
    elif action == "install":
      steps += pod.install(git_url=args.git_url, ref=args.ref, python=args.python)
    elif action == "run":
      if not train_args:
        raise ValueError(f"run needs the `pulse-jax {args.job}` arguments after `--`")
      if args.num_slices > 1 and dcn_slices(train_args) != args.num_slices:
        raise ValueError(f"run over {args.num_slices} slices needs --config.mesh.dcn=({args.num_slices},1,1) "
                         "after `--` (data parallelism across the slices)")
      steps += pod.run(args.job, train_args, parse_env(args.env))
    elif action == "logs":
      steps += pod.logs(args.job, args.worker, args.node)
    else:
      steps += pod.delete(queued=args.queued)
  return steps


def main(argv: list[str] | None = None, run: Runner = run_subprocess) -> int:
  """Command-line entry; `run` replaces subprocess execution (tests inject a recorder)."""
  parser, args, train_args = parse_launcher_args(argv, "python -m launch.tpu_pod", __doc__, add_arguments)
  try:
    steps = launch_steps(args, train_args)
  except ValueError as e:
    parser.error(str(e))
  return execute(steps, dry_run=args.dry_run, run=run)


if __name__ == "__main__":
  sys.exit(main())
