"""The steps of a launch, printed for --dry-run or executed in order; shell snippets both launchers share.

A step is either a command (a tuple of arguments, run without a shell so nothing is re-parsed locally) or a
local file to write (an sbatch script). A dry run prints each step as copy-pasteable shell: commands through
shlex.join, files as a quoted heredoc. Executing runs each command through an injectable `run` callable, so
tests drive the real path with a fake that records what would have run.
"""

import argparse
import dataclasses
import pathlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
HEREDOC_END = "EOF"


@dataclasses.dataclass(frozen=True)
class WriteFile:
  """A file the launch writes on this machine. `text` ends with a newline; a dry run prints it as a heredoc."""
  path: str
  text: str


Step = tuple[str, ...] | WriteFile
Runner = Callable[[tuple[str, ...]], None]


def shell_text(step: Step) -> str:
  """The step as shell a user can paste: the command shell-quoted, or `cat > path <<'EOF' ... EOF`."""
  if isinstance(step, WriteFile):
    return f"cat > {shlex.quote(step.path)} <<'{HEREDOC_END}'\n{step.text}{HEREDOC_END}"
  return shlex.join(step)


def run_subprocess(command: tuple[str, ...]) -> None:
  subprocess.run(command, check=True)


def execute(steps: Iterable[Step], *, dry_run: bool, run: Runner = run_subprocess) -> int:
  """Prints (dry_run) or performs the steps in order; returns the exit status of the first failing command."""
  for step in steps:
    if dry_run:
      print(shell_text(step), flush=True)
      continue
    if isinstance(step, WriteFile):
      print(f"+ write {step.path}", flush=True)
      pathlib.Path(step.path).write_text(step.text)
      continue
    print(f"+ {shell_text(step)}", flush=True)
    try:
      run(step)
    except subprocess.CalledProcessError as e:
      print(f"launch: command failed with exit status {e.returncode}: {shlex.join(step)}", file=sys.stderr)
      return e.returncode or 1
    except FileNotFoundError:
      print(f"launch: {step[0]} not found on PATH", file=sys.stderr)
      return 127
  return 0


def split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `launcher options -- pulse-jax train options` at the first bare `--`."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def parse_env(assignments: Sequence[str]) -> dict[str, str]:
  """{'K': 'V'} from ['K=V', ...] (the repeated --env option); raises ValueError on an entry without '='."""
  env = {}
  for assignment in assignments:
    name, sep, value = assignment.partition("=")
    if not sep or not name.isidentifier():
      raise ValueError(f"--env {assignment!r} is not of the form NAME=VALUE")
    env[name] = value
  return env


def venv_install(python: str, extra: str) -> str:
  """Shell that, inside a checkout, creates .venv with `python` once and installs the project with `extra`."""
  return (f"(test -x .venv/bin/python || {shlex.quote(python)} -m venv .venv)"
          f" && .venv/bin/pip install --quiet --upgrade pip"
          f" && .venv/bin/pip install --quiet -e {shlex.quote(f'.[{extra}]')}")


JOBS = ("train", "eval")  # the pulse-jax commands the launchers start on every host


def pulse_jax_command(job: str, args: Sequence[str], env: Mapping[str, str]) -> str:
  """Shell for `pulse-jax JOB ARGS` from the checkout's venv, under `env` (through env(1) when not empty)."""
  prefix = ["env", *(f"{name}={value}" for name, value in env.items())] if env else []
  return shlex.join([*prefix, ".venv/bin/pulse-jax", job, *args])


def detached(command: str, log: str) -> str:
  """Shell that starts `command` in its own session, appending its output to `log`, and returns at once.

  setsid + nohup + stdin from /dev/null keep the job alive after the ssh connection that started it closes.
  """
  return f"setsid nohup {command} >> {shlex.quote(log)} 2>&1 < /dev/null &"


def parse_launcher_args(argv: Sequence[str] | None, prog: str, description: str,
                        add_arguments: Callable[[argparse.ArgumentParser], None]
                        ) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
  """(parser, the launcher's own options, the `pulse-jax train` arguments after `--`) of a launcher's argv."""
  own, train_args = split_train_args(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return parser, parser.parse_args(own), train_args
