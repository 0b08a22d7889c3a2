"""Run a console script either in this process (Typer's ``CliRunner``) or as the installed script in a subprocess,
with the same result shape (``returncode``, ``stdout``, ``stderr``).

In-process is for the many cases where a subprocess adds nothing but an interpreter start and the torch / lerobot
imports (seconds each on 2 cores): flag and data errors, damaged files. The parsing, the one-line error wrapper and
the exit code are the same code either way (``behavior_smolvla.cli``'s Typer apps, with the argument rewriting the
console scripts do). An exception that escapes the command is given back as the interpreter would print it (a
``Traceback`` on stderr, exit code 1), so "no traceback" assertions keep their meaning. Each command keeps real
subprocess cases elsewhere (``tests/test_bad_inputs.py::test_entry_point_exit_codes``, the CLI test modules) that
prove the installed entry points and their exit codes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = ("smolvla-inspect", "smolvla-filter-state", "smolvla-train", "smolvla-eval", "smolvla-serve")


@dataclass
class CliResult:
    """What a finished command gave back: its exit code and its two output streams (text)."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(command: str, args: list[str], env: dict[str, str | None] | None = None) -> CliResult:
    """Run console script ``command`` (e.g. ``"smolvla-train"``) on ``args`` in this process.

    ``env`` entries are set in ``os.environ`` for the call only (None: removed for the call). Uses the app ``python cli.py <name>`` dispatches
    to, with the same argument rewriting (``--resume`` alone, snake_case flags) the ``smolvla-train`` script does.
    """
    from typer.testing import CliRunner

    from behavior_smolvla import cli

    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    app = cli._SUBCOMMANDS[command.removeprefix("smolvla-")]
    argv = cli._normalise_resume_flag([str(a) for a in args])
    result = CliRunner().invoke(app, argv, env=env, prog_name=command, catch_exceptions=True)
    stderr = result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What the interpreter prints for an uncaught exception (and its exit code).
        stderr += "".join(traceback.format_exception(*result.exc_info))
        code = 1
    return CliResult(code, result.stdout, stderr)


def run_subprocess(command: str, args: list[str], env: dict[str, str | None] | None = None,
                   timeout: float = 300) -> CliResult:
    """Run the installed console script ``command`` (next to this interpreter) in a subprocess, with this process's
    environment updated by ``env`` (None: removed)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(BIN / command), *map(str, args)], check=False, capture_output=True, text=True,
                          env={k: v for k, v in full_env.items() if v is not None}, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def without_cache_builds(stderr: str) -> str:
    """``stderr`` without the informational ``numeric cache: built ...`` lines (a process that built a numeric cache
    entry says so once; the tests that count a command's message lines count the others)."""
    from behavior_smolvla.data.cache import BUILT_LINE_PREFIX

    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith(BUILT_LINE_PREFIX))
