"""Instructions executed, counted by valgrind's callgrind: the figure that repeats on a noisy host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple


class Count(NamedTuple):
    all_threads: int
    main_thread: int  # the application's thread; the rest is span export and the index writer


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")


def instructions(script: str, *args: str) -> Count:
    """Instructions ``python script args`` executes, in all threads and in the main thread."""
    # The package of the checkout the script is in (a worktree's), not the one installed in the venv.
    root = str(Path(script).resolve().parents[1])
    env = {**os.environ, "PYTHONHASHSEED": "0", "HIVE_NO_FILE_LOG": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
             sys.executable, script, *args],
            env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{script} {' '.join(args)} failed under valgrind:\n{proc.stderr[-3000:]}")
        per_thread = {}  # one file per thread, numbered from -01 (the main thread)
        for path in Path(tmp).glob("callgrind.out-*"):
            match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            if match is None:
                raise SystemExit(f"no instruction count in {path.name}")
            per_thread[path.name.rsplit("-", 1)[1]] = int(match[1])
    return Count(sum(per_thread.values()), per_thread["01"])
