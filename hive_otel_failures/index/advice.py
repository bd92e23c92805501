"""Hive's evolution rules as code: when a pattern warrants changing the agent, and whether a fix held.

Pure functions over counts the store has already summed; no SQL here. The rules are the
ones Hive's evolution guide gives: evolve when the same failure recurs across sessions,
blocks more than a fifth of runs, violates a hard constraint, or the success rate drops;
not for one-off failures, transient ones, or what a human should handle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

HUMAN_KINDS = frozenset({"escalated"})  # the agent asked for a human: not the agent's definition to change
HARD_CONSTRAINT_KINDS = frozenset({"constraint_violated"})  # only hard violations become failures of this kind
NON_BLOCKING_KINDS = frozenset({"soft_constraint_violated"})  # recorded, but the run still succeeded
FIX_MIN_RUNS = 30  # runs from a fix's version on before its verdict can be more than too_early


def lower_p_value(hits_before: int, n_before: int, hits_after: int, n_after: int) -> float | None:
    """p-value of a one-sided two-proportion z-test that ``hits_after / n_after`` is lower than before.

    The test declining success and fix verdicts both use. None when either side is empty or
    all outcomes agree (no variance to test against).
    """
    if n_before <= 0 or n_after <= 0:
        return None
    pooled = (hits_before + hits_after) / (n_before + n_after)
    variance = pooled * (1 - pooled) * (1 / n_before + 1 / n_after)
    if variance <= 0:
        return None
    z = (hits_before / n_before - hits_after / n_after) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class VersionCounts:
    """One pattern's failures and sessions in one agent version."""

    failures: int = 0
    sessions: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf

    def add(self, other: "VersionCounts") -> None:
        self.failures += other.failures
        self.sessions += other.sessions
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)


def total(counts: Iterable[VersionCounts]) -> VersionCounts:
    summed = VersionCounts()
    for c in counts:
        summed.add(c)
    return summed


@dataclass
class Split:
    """Which versions a resolution's rate is measured before and from; basis ``time`` when versions can't tell."""

    basis: Literal["version", "time"]
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


def split_versions(first_seen: Mapping[str, float], resolved_ts: float, named: str | None, *,
                   by_time: bool = False) -> Split:
    """Versions before a resolution and from its version on.

    ``first_seen`` maps each known version of the agent to when it was first seen. The
    resolution's named version and every version first seen at or after it are "after".
    Without a named version, or with one never seen (a label such as "v2" rather than the
    hash Hive's runs carry), the versions first seen after the resolution are. A fix made
    outside the agent (``by_time``), or an agent with no known versions, is split by time.
    """
    known = {v: ts for v, ts in first_seen.items() if v}
    if by_time or (not known and not named):
        return Split("time")
    if named and named in known:
        after = {v for v, ts in known.items() if ts >= known[named]}
    else:
        after = {v for v, ts in known.items() if ts > resolved_ts} | ({named} if named else set())
    ordered = sorted(known, key=lambda v: (known[v], v))
    return Split("version", [v for v in ordered if v not in after],
                 sorted(after, key=lambda v: (known.get(v, math.inf), v)))


def fix_verdict(before_sessions: int, before_runs: int, after_sessions: int, after_runs: int, *, min_runs: int,
                alpha: float) -> tuple[str, float | None, str]:
    """``fixed`` / ``not_fixed`` / ``too_early`` for the pattern's rate per run, with the p-value and why.

    Is the rate from the fix on lower than before it, beyond what chance explains at ``alpha``?
    """
    if after_runs < min_runs:
        return "too_early", None, f"{after_runs} runs since the fix; {min_runs} are needed to tell"
    if before_runs <= 0:
        return "too_early", None, "no runs recorded before the fix to compare with"
    p = lower_p_value(before_sessions, before_runs, after_sessions, after_runs)
    rates = f"{before_sessions / before_runs:.1%} of runs before, {after_sessions / after_runs:.1%} after"
    if p is not None and p < alpha:
        return "fixed", p, f"{rates} (p={p:.2g})"
    if after_sessions == 0:
        return "too_early", p, f"{rates}: not yet enough runs to rule out chance"
    return "not_fixed", p, f"{rates}: the fix did not lower the rate significantly"
