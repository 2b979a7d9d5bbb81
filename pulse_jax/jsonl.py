"""Append-only JSON-lines files (predictions, the judge's cache) that a kill can cut mid-line."""

import pathlib


def complete_lines(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line number, text) of each non-blank complete line of `path`; [] when it does not exist.

  A last line without its newline (the writer was killed while appending it) is cut off the file, so that the
  next append starts a clean line and the lost record is simply made again.
  """
  if not path.is_file():
    return []
  content = path.read_bytes()
  complete = content.rfind(b"\n") + 1
  if complete < len(content):
    with path.open("r+b") as f:
      f.truncate(complete)
  lines = content[:complete].decode("utf-8", errors="replace").splitlines()
  return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
