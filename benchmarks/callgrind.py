"""Instructions executed, counted by valgrind's callgrind: the figure that repeats on a noisy host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")


def instructions(script: str, *args: str, main_thread_only: bool = False) -> int:
    """Instructions ``python script args`` executes: all threads, or the main thread's alone."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "HIVE_NO_FILE_LOG": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        threads = ["--separate-threads=yes"] if main_thread_only else []
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", *threads, f"--callgrind-out-file={out}", sys.executable, script, *args],
            env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{script} {' '.join(args)} failed under valgrind:\n{proc.stderr[-3000:]}")
        if main_thread_only:  # one file per thread; the main thread's ends in -01
            match = re.search(r"^(?:summary|totals): (\d+)", Path(f"{out}-01").read_text(), re.M)
        else:
            match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise SystemExit(f"valgrind printed no instruction count:\n{proc.stderr[-2000:]}")
    return int(match[1])
