"""Shared by the hostile-input tests: run the CLI in-process or in a guarded subprocess, and check refusals."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from awmtrace.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
MEMORY_LIMIT = 2 << 30  # bytes of address space a guarded subprocess may map
TIMEOUT = 120  # seconds before a guarded subprocess counts as hung
CLI = "import sys; from awmtrace.cli import main; sys.argv[0] = 'awm'; main()"
OPENER = "import sys; from pathlib import Path; from awmtrace.io import open_source; open_source(Path(sys.argv[1]))"


def compare(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["compare", "-q", *args])
    return result.exit_code, result.output


def assert_refused(code: int, output: str, *needles: str) -> None:
    """Non-zero exit, no traceback, and every needle in the (unwrapped) message."""
    assert code != 0, output
    assert "Traceback" not in output, output
    text = " ".join(output.split())  # rich wraps long lines at the terminal width
    for needle in needles:
        assert needle in text, (needle, output)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def guarded(code: str, *args: str) -> tuple[int, str, float]:
    """Run ``python -c code args`` with an address-space limit and a timeout: (exit code, stderr, seconds)."""
    env = dict(os.environ, PYTHONPATH=SRC, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="400")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_limit_memory,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: still running after {TIMEOUT} s")
    return proc.returncode, proc.stderr + proc.stdout, time.monotonic() - start
