"""How long ``hive-failures`` takes to answer, start-up included, beside bare Python and its libraries.

    python benchmarks/cli_startup.py [--runs 20]

Each command runs as a fresh process on a small index (200 failures of 20 patterns, 400
runs), ``--runs`` times, interleaved with the baselines so the host's load hits them alike.
Our modules load from bytecode, as ``pip install`` leaves the package (it compiles it); then
the same commands load them from source, as an editable install does every time under
``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it). Targets (issue 13): <= 150 ms for ``--help`` and for a query on
a small index. Prints figures (min and median, ms); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hive_otel_failures"
COMMANDS = (["--help"], ["patterns", "--json"], ["list"], ["stats", "--json"])
BASELINES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import click, pydantic.main'": [sys.executable, "-c", "import click, pydantic.main"],
}


def small_index(path: Path) -> None:
    import hive_otel_failures as hof

    idx = hof.open_index(path)
    now = datetime.now(timezone.utc)
    failures = [hof.FailureRecord(agent_id=f"agent-{i % 4}", node_id=f"n{i % 5}", session_id=f"s{i // 2}",
                                  error_type="builtins.ValueError", error_message=f"bad row {i % 20}",
                                  timestamp=now - timedelta(minutes=i)) for i in range(200)]
    runs = [hof.RunOutcome(session_id=f"s{i}", agent_id=f"agent-{i % 4}", success=i % 3 != 0,
                           started_at=now - timedelta(minutes=i, seconds=5), ended_at=now - timedelta(minutes=i))
            for i in range(400)]
    idx.add(failures, runs)
    idx.close()


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    exe = shutil.which("hive-failures")
    if exe is None:
        sys.exit("hive-failures is not on PATH: pip install -e . first")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "failures.db"
        small_index(db)
        env = {**os.environ, "HIVE_FAILURES_DB": str(db)}
        times: dict[str, list[float]] = {}
        for loaded in ("bytecode", "source"):
            for cache in PACKAGE.rglob("__pycache__"):
                shutil.rmtree(cache)
            if loaded == "bytecode":
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(PACKAGE)], check=True)  # as pip does
            cases = dict(BASELINES) if loaded == "bytecode" else {}  # baselines once, beside the first
            cases.update({f"hive-failures {' '.join(c)}  ({loaded})": [exe, *c] for c in COMMANDS})
            run_env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}  # nothing written: each case loads as said
            for argv in cases.values():  # one warm-up each: the OS's file cache
                timed(argv, run_env)
            for _ in range(args.runs):
                for name, argv in cases.items():
                    times.setdefault(name, []).append(timed(argv, run_env))
    print(f"{args.runs} runs each, interleaved; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    width = max(map(len, times))
    for name, values in times.items():
        print(f"{name:<{width}}  min {1000 * min(values):6.1f} ms  median {1000 * statistics.median(values):6.1f} ms")
    print("target: <= 150 ms for --help and for a query on a small index")


if __name__ == "__main__":
    main()
