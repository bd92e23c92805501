"""What the index answers with: plain pydantic models, JSON-ready for the CLI and MCP."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Pattern(BaseModel):
    """Failures that share a fingerprint, with what was done about them."""

    fingerprint: str
    agent_id: str | None
    node_id: str | None
    error_type: str
    kind: str
    sample_message: str
    transient: bool
    count: int
    sessions: int
    first_seen: datetime
    last_seen: datetime
    resolution: str | None = None
    resolved_at: datetime | None = None
    evolution_triggered: bool = False
    resolved_in_version: str | None = None
    recurred_after_resolution: bool = False


class NodeStats(BaseModel):
    node_id: str | None
    failures: int
    sessions: int


class Stats(BaseModel):
    """Run and failure counts over a window: the denominators behind every rate."""

    agent_id: str | None
    since: datetime | None
    runs: int
    failed_runs: int
    failure_rate: float | None  # failed_runs / runs; None without recorded runs
    failures: int
    sessions_with_failures: int
    patterns: int
    by_node: list[NodeStats]
    by_kind: dict[str, int]


class Resolution(BaseModel):
    fingerprint: str
    resolved_at: datetime
    resolution: str
    evolution_triggered: bool
    agent_version: str | None


class Advice(BaseModel):
    """A pattern that warrants changing the agent, and the evidence for it."""

    pattern: Pattern
    reason: str
    session_share: float | None  # share of the agent's runs this pattern hit
    example_failure_ids: list[str]
