"""What checking a step's conditions costs, in instructions executed, with 0, 5 and 50 conditions.

Per step: what the instrumentation adds when a node, a worker or a loop ends, i.e. a Step built
from what it produced and ``ConditionSet.check_constraints`` over the Goal's constraints (all
kept: the common case). Per run: building the run's ConditionSet from its Goal (expressions are
compiled once per process, so this is reading the Goal). Instruction counts (valgrind
--tool=callgrind) repeat on a noisy host; timings do not. Each figure subtracts a process that
does the same start-up and warm-up but no measured iterations.

    python benchmarks/conditions_instructions.py [--iterations 2000]   # needs valgrind; ~1 minute

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from callgrind import instructions, require_valgrind

SIZES = (0, 5, 50)
# A mix of what Goals and users declare: field bounds, memory lookups, tool-call rules, budgets.
TEMPLATES = (
    "output['total'] >= 0",
    "memory.get('approved') is True or 'delete_user' not in tool_calls",
    "not any(matches(t, 'delete_*') for t in tool_calls) or memory.get('approved') is True",
    "tokens < 50000 and duration_s < 300",
    "len(output['items']) <= 100",
)


def goal(size: int) -> SimpleNamespace:
    """A Goal as Hive's has it (read by attribute names, as conditions.py reads Hive's)."""
    return SimpleNamespace(success_criteria=[], constraints=[
        SimpleNamespace(id=f"c{n}", constraint_type="hard" if n % 2 else "soft", category="general",
                        description="", check=TEMPLATES[n % len(TEMPLATES)]) for n in range(size)])


def child(mode: str, size: int, iterations: int) -> None:
    """Runs under valgrind: start-up and warm-up, then ``iterations`` steps (or runs) of ``mode``."""
    from hive_otel_failures.conditions import ConditionSet, Step

    output = {"total": 42.0, "items": list(range(20)), "report": "done"}
    memory = {"customer": "ACME", "approved": True, **output}
    tool_names = ["lookup_order", "get_user", "send_receipt"]
    conditions = ConditionSet(goal(size), "bench-agent")
    assert not conditions.check_constraints(Step(output, memory, {}, 1200, tool_names, 2.5)), "all are kept"
    for _ in range(iterations):
        if mode == "step":  # as the hooks do: nothing to check, nothing built
            if conditions:
                conditions.check_constraints(Step(output, memory, {}, 1200, tool_names, 2.5))
        else:
            ConditionSet(goal(size), "bench-agent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000, help="steps (or runs) measured per process")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SIZE", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, size, iterations = args.child
        child(mode, int(size), int(iterations))
        return
    require_valgrind()
    jobs = [(mode, size, n) for size in SIZES for mode, n in (("base", 0), ("step", args.iterations),
                                                              ("run", args.iterations))]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: instructions(__file__, "--child", job[0], str(job[1]),
                                                                   str(job[2])).main_thread, jobs)))
    print(f"instructions on the application's thread ({args.iterations} iterations each)")
    for size in SIZES:
        base = counts[("base", size, 0)]
        per_step = (counts[("step", size, args.iterations)] - base) / args.iterations
        per_run = (counts[("run", size, args.iterations)] - base) / args.iterations
        print(f"  {size:>2} conditions: {per_step / 1000:8.1f} k per step (Step + check_constraints)   "
              f"{per_run / 1000:8.1f} k per run (ConditionSet from the Goal)")


if __name__ == "__main__":
    main()
