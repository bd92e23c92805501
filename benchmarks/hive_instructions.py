"""Instrumentation overhead on the Hive workload of hive_overhead.py, in instructions executed.

Timings on a shared host move by 2x; instruction counts (valgrind --tool=callgrind) repeat
to a fraction of a percent, so this is the figure to optimise against. Four processes run
the same start-up, warm-up and one-off instrument()/uninstrument(); three of them then run N
workload iterations: plain, instrumented, and instrumented with a sampler that records
nothing (our hooks alone, without the SDK's span work). Subtracting the start-up-only
process leaves the instructions per run.

    python benchmarks/hive_instructions.py [--iterations 3]   # needs valgrind; ~12 minutes

Prints figures; asserts nothing. Figures for all threads (span export and the index writer
too) and for the main thread alone: on a machine with a spare core, the main thread's share
is what the agent waits for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from callgrind import Count, instructions, require_valgrind

MODES = ("start-up", "plain", "instrumented", "unsampled")


def child(mode: str, iterations: int) -> None:
    """Runs under valgrind: start-up, one plain warm-up iteration, then the measured iterations."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import asyncio
    import logging

    from hive_overhead import DiscardExporter, successful
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    import hive_otel_failures as hof
    from hive_otel_failures.instrumentation import HiveInstrumentor

    logging.getLogger("framework").setLevel(logging.CRITICAL)
    work = Path(tempfile.mkdtemp())
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    processor = hof.FailureIndexProcessor(str(work / "failures.db"))
    provider.add_span_processor(processor)

    async def go(first: int, count: int) -> None:
        for i in range(first, first + count):
            await successful(work, i)

    asyncio.run(go(0, 1))  # the same warm-up for every process
    # The same one-off work in every process too: the dependency check, imports, wrapping.
    instrumentor = HiveInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    instrumentor.uninstrument()
    if mode == "instrumented":
        instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    elif mode == "unsampled":  # the hooks run, but the SDK records no span: what is ours alone
        instrumentor.instrument(tracer_provider=TracerProvider(sampler=ALWAYS_OFF), skip_dep_check=True)
    asyncio.run(go(1, iterations))
    processor.force_flush()
    provider.shutdown()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3, help="workload iterations (10 runs each) per side")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, 0 if args.child == "start-up" else args.iterations)
        return
    require_valgrind()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(MODES, pool.map(
            lambda m: instructions(__file__, "--child", m, "--iterations", str(args.iterations)), MODES)))
    runs = args.iterations * 10
    for scope in Count._fields:
        plain, ours, unsampled = (getattr(counts[m], scope) - getattr(counts["start-up"], scope)
                                  for m in ("plain", "instrumented", "unsampled"))
        print(f"{scope.replace('_', ' ')}: {plain / runs / 1e6:.2f} M instructions per successful run -> "
              f"{ours / runs / 1e6:.2f} M instrumented  ratio {ours / plain:.3f}  (target <= 1.10; {runs} runs)")
        print(f"  of the {(ours - plain) / runs / 1e6:.2f} M added: the hooks with no span recorded (sampler off) "
              f"{(unsampled - plain) / runs / 1e6:.2f} M, recording and processing the spans "
              f"{(ours - unsampled) / runs / 1e6:.2f} M")

if __name__ == "__main__":
    main()
