"""The index processor's cost on the application thread, in instructions executed.

The same spans as processor_overhead.py (a BatchSpanProcessor pipeline, with and without
FailureIndexProcessor), counted by callgrind on the main thread only: the span-ending
thread is the application's. Each side runs twice, with N and 3N spans; the difference
divided by 2N is the cost per span, start-up excluded.

    python benchmarks/processor_instructions.py [--spans 1000]   # needs valgrind; ~3 minutes

Prints figures; asserts nothing. Targets: plain spans <= 1.05x, failure spans <= 1.10x.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from callgrind import instructions, require_valgrind

SIDES = ("without", "with")
KINDS = ("plain", "failure")
FAILURE_SHARE = 10  # failure spans are costlier (scrub, fingerprint): a tenth as many, as in processor_overhead


def child(side: str, kind: str, spans: int) -> None:
    """Runs under valgrind: the pipeline, then ``spans`` spans of one kind on this thread."""
    from processor_overhead import make_pipeline, make_spans, sample_record

    # Delays past the run's end: no timer wake-ups of either background thread to count.
    provider, _ = make_pipeline(side == "with", Path(tempfile.mkdtemp()) / "failures.db", delay_millis=10**7)
    tracer = provider.get_tracer("bench")
    records = [sample_record(i) for i in range(spans)] if kind == "failure" else None
    gc.disable()  # a collection would land on whichever side happens to run then
    make_spans(tracer, records, spans)
    os._exit(0)  # the measured part is over: no shutdown, flush or exit work to count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1000, help="plain spans N (failure spans: N / 10)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, kind, spans = args.child
        child(side, kind, int(spans))
        return
    require_valgrind()
    counts = {kind: args.spans // (FAILURE_SHARE if kind == "failure" else 1) for kind in KINDS}
    jobs = [(side, kind, n) for side, kind in itertools.product(SIDES, KINDS) for n in (counts[kind], 3 * counts[kind])]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = dict(zip(jobs, pool.map(
            lambda job: instructions(__file__, "--child", *map(str, job)).main_thread, jobs)))
    for kind in KINDS:
        n = counts[kind]
        per_span = {side: (results[(side, kind, 3 * n)] - results[(side, kind, n)]) / (2 * n) for side in SIDES}
        target = "1.05" if kind == "plain" else "1.10"
        print(f"{kind + ' span':13s}: {per_span['without'] / 1e3:.1f}k instructions -> {per_span['with'] / 1e3:.1f}k "
              f"with the processor  ratio {per_span['with'] / per_span['without']:.3f}  (target <= {target}; "
              f"main thread, {2 * n} spans per side)")


if __name__ == "__main__":
    main()
