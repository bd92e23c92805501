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
    main_marked: int = 0  # the main thread within the script's operator.call(...), if asked for


MARK = "_operator_call"  # operator.call's C function: a script marks what to count apart with it


def require_valgrind() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")


def instructions(script: str, *args: str, marked: bool = False) -> Count:
    """Instructions ``python script args`` executes, in all threads and in the main thread.

    ``marked``: also those of the main thread within the script's last ``operator.call(...)``,
    counted apart (callgrind dumps on entering and leaving it): a figure with no start-up to
    subtract, which repeats more closely than a whole process's.
    """
    # The package of the checkout the script is in (a worktree's), not the one installed in the venv.
    root = str(Path(script).resolve().parents[1])
    env = {**os.environ, "PYTHONHASHSEED": "0", "HIVE_NO_FILE_LOG": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        dumps = [f"--dump-before={MARK}", f"--dump-after={MARK}"] if marked else []
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *dumps,
             sys.executable, script, *args],
            env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{script} {' '.join(args)} failed under valgrind:\n{proc.stderr[-3000:]}")
        per_thread: dict[str, int] = {}  # files per thread, numbered from -01 (the main thread); one per dump
        marked_parts: dict[int, int] = {}  # main thread: dump number -> count, for the dumps on leaving MARK
        for path in Path(tmp).glob("callgrind.out*-*"):
            text = path.read_text()
            match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if match is None:
                raise SystemExit(f"no instruction count in {path.name}")
            thread = path.name.rsplit("-", 1)[1]
            per_thread[thread] = per_thread.get(thread, 0) + int(match[1])
            part = re.search(r"^part: (\d+)", text, re.M)
            if thread == "01" and part and re.search(rf"^desc: Trigger: .*--dump-after={MARK}", text, re.M):
                marked_parts[int(part[1])] = int(match[1])
    if marked and not marked_parts:
        raise SystemExit(f"{script} {' '.join(args)}: nothing ran within operator.call(...)")
    return Count(sum(per_thread.values()), per_thread["01"], marked_parts[max(marked_parts)] if marked else 0)
