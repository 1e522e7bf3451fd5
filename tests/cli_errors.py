"""Run a module as a user would and check that a bad input ends as one line, exit status 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`python args...` in `cwd` with tracking off (unless `env` says otherwise)."""
    full_env = {**os.environ, "SMDM_TRACKING": "off", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one stderr line, no traceback, every needle in it; returns the line."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]
