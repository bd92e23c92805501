"""Does a process that records failures for a long time grow? RSS per 100k failures, to 1M.

    python benchmarks/memory.py [--failures 1000000] [--step 100000]   # ~15 minutes; --quick: 200k

One application thread records failures through ``hof.configure()`` (no export): a span,
``record_failure`` with 1-4 KB of context and memory (reliability.realistic_record), and a
run outcome for every fifth. It waits for the writer at each 1,000 failures, so that every
failure is indexed (nothing dropped) and the backlog is the same at every point: the queue
holds up to 10k records (~40 MB of these), and how much of it a run fills depends on the
host's load, not on how many failures came before. RSS (/proc/<pid>/statm) of the application's
process and of its index writer process at each step. The same
loop on the plain SDK (a TracerProvider without our processor) runs beside it, in its own
interpreter. Target (issue 12): RSS flat within 10% from 100k to 1M failures.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability  # noqa: E402  (its child runner, payloads and plain side)

import hive_otel_failures as hof  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of this process (or of ``pid``) now, not its peak."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def _writer_mb(processor: object) -> float:
    """The index writer process's resident memory (0 without one: the plain SDK, or a writer in-process)."""
    process = getattr(processor, "_process", None)
    return 0.0 if process is None else rss_mb(process.popen.pid)


def grow(handle: object, failures: int, step: int) -> None:
    """The child: record ``failures``, RSS at every ``step``; the answer through reliability.report."""
    tracer = handle.tracer_provider.get_tracer("memory")  # type: ignore[attr-defined]
    processor = handle.processor  # type: ignore[attr-defined]
    texts = reliability.payload_texts()
    points: list[tuple[int, float, float, float]] = []
    started = time.monotonic()
    for i in range(1, failures + 1):
        with tracer.start_as_current_span("node"):
            hof.record_failure(reliability.realistic_record(texts, i))
            if i % 5 == 0:
                hof.record_run(hof.RunOutcome(session_id=f"s-0-{i // 5 - 1}", agent_id=f"agent-{i % 10}",
                                              success=False, failures=5))
        if i % 1_000 == 0 and processor is not None:
            processor.force_flush(600_000)  # keep up: every failure indexed, the same backlog at each point
        if i % step == 0:
            points.append((i, rss_mb(), _writer_mb(processor), time.monotonic() - started))
    reliability.report({"points": points, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        **({} if processor is None else vars(handle.stats()))})  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failures", type=int)
    parser.add_argument("--step", type=int)
    parser.add_argument("--quick", action="store_true", help="200k failures, a point per 20k")
    args = parser.parse_args()
    failures = args.failures or (200_000 if args.quick else 1_000_000)
    step = args.step or max(1, failures // 10)
    code = (f"import hive_otel_failures as hof\nimport memory\n"
            f"memory.grow(hof.configure(), failures={failures}, step={step})\n")
    with tempfile.TemporaryDirectory() as tmp:
        result = reliability.both(code, {}, Path(tmp), timeout=7200)
    ours, plain = result[reliability.OURS], result[reliability.PLAIN]
    print(f"{failures} failures recorded by one process, RSS in MB at each step (ours: indexed "
          f"{ours['written']}, runs {ours['runs_written']}, dropped {ours['dropped']}, errors {ours['errors']})")
    print(f"{'failures':>10} {'ours':>8} {'writer':>8} {'both':>8} {'plain':>8} {'ours s':>8}")
    for (n, mb, writer_mb, s), (_, plain_mb, _, _) in zip(ours["points"], plain["points"]):
        print(f"{n:>10} {mb:>8.1f} {writer_mb:>8.1f} {mb + writer_mb:>8.1f} {plain_mb:>8.1f} {s:>8.0f}")
    (n0, first, writer0, _), (n1, last, writer1, _) = ours["points"][0], ours["points"][-1]
    print(f"ours, the application's process and its writer process: {(last + writer1) / (first + writer0):.3f}x "
          f"from {n0} to {n1} failures (target: within 10%; the application's process alone {last / first:.3f}x); "
          f"peak {ours['max_rss_mb']:.0f} MB, plain peak {plain['max_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
