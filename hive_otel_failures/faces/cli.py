"""``hive-failures``: the failure index for people (tables) and agents (``--json``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ..index import FailureIndex, FailureIndexError, index_path, open_index

app = typer.Typer(help="Query the local index of Hive agent failures.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
# Piped output gets a 140-column page rather than rich's 80, so tables stay readable in logs.
out = Console(width=shutil.get_terminal_size(fallback=(140, 24)).columns)
err = Console(stderr=True)

Db = Annotated[Optional[str], typer.Option(
    "--db", help="Index path or sqlite:/// URL [default: HIVE_FAILURES_DB or $HIVE_HOME/failures.db]")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Agent = Annotated[Optional[str], typer.Option("--agent", help="Only this agent id.")]
Since = Annotated[Optional[str], typer.Option("--since", help="Window: 30m, 24h, 7d or an ISO 8601 time.")]


@contextmanager
def _index(db: str | None, *, create: bool = False) -> Iterator[FailureIndex]:
    try:
        index = open_index(db, create=create)
    except FailureIndexError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        yield index
    except FailureIndexError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        index.close()


def _emit_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
    elif isinstance(value, list):
        data = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    else:
        data = value
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(title: str, *columns: str, wide: str = "error") -> Table:
    """Ids, counts and times never wrap; the one wide text column takes what room is left."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        if column == wide:
            table.add_column(column, overflow="fold", ratio=1, min_width=20)
        else:
            table.add_column(column, no_wrap=True)
    return table


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%m-%d %H:%M:%S") if value else "-"


def _cut(text: str | None, n: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


@app.command("list")
def list_failures(db: Db = None, as_json: Json = False, agent: Agent = None,
                  node: Annotated[Optional[str], typer.Option("--node", help="Only this node id.")] = None,
                  error_type: Annotated[Optional[str],
                                        typer.Option("--error-type", help="Only this error type.")] = None,
                  session: Annotated[Optional[str], typer.Option("--session", help="Only this session id.")] = None,
                  since: Since = None, limit: Annotated[int, typer.Option("--limit", min=0)] = 20) -> None:
    """The most recent failures, newest first."""
    with _index(db) as index:
        records = index.recent(agent_id=agent, node_id=node, error_type=error_type, session_id=session,
                               since=since, limit=limit)
    if as_json:
        return _emit_json(records)
    table = _table(f"{len(records)} recent failures", "id", "when", "agent", "node", "kind", "attempts", "error")
    for r in records:
        table.add_row(r.failure_id[:12], _when(r.timestamp), r.agent_id or "-", r.node_id or "-", str(r.kind),
                      str(r.attempts), f"{r.error_type}: {_cut(r.error_message, 80)}")
    out.print(table)


@app.command()
def show(failure_id: Annotated[str, typer.Argument(help="A failure id or a unique prefix (6+ chars).")],
         db: Db = None, as_json: Json = False) -> None:
    """One failure in full: error, attempts, judge feedback, context, tool calls, agent snapshot."""
    with _index(db) as index:
        record = index.get(failure_id)
    if record is None:
        err.print(f"[red]error:[/red] no failure with id {failure_id!r}")
        raise typer.Exit(1)
    if as_json:
        return _emit_json(record)
    data = record.model_dump(mode="json")
    table = Table(show_header=False, title=f"failure {record.failure_id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if value in (None, [], {}, ""):
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    out.print(table)


@app.command()
def patterns(db: Db = None, as_json: Json = False, agent: Agent = None, since: Since = None,
             limit: Annotated[int, typer.Option("--limit", min=0)] = 50) -> None:
    """Failures grouped by fingerprint: what keeps failing, where, since when, what was done."""
    with _index(db) as index:
        found = index.patterns(agent_id=agent, since=since, limit=limit)
    if as_json:
        return _emit_json(found)
    table = _table(f"{len(found)} failure patterns", "fingerprint", "count", "sessions", "agent/node", "kind",
                   "status", "last seen", "error")
    for p in found:
        status = "transient" if p.transient else "systematic"
        if p.resolution:
            status = "recurred after fix" if p.recurred_after_resolution else f"resolved: {_cut(p.resolution, 30)}"
        table.add_row(p.fingerprint, str(p.count), str(p.sessions), f"{p.agent_id or '-'}/{p.node_id or '-'}", p.kind,
                      status, _when(p.last_seen), f"{p.error_type}: {_cut(p.sample_message, 80)}")
    out.print(table)


@app.command()
def stats(db: Db = None, as_json: Json = False, agent: Agent = None, since: Since = None) -> None:
    """Runs, failed runs, failure rate and the nodes where failures happen."""
    with _index(db) as index:
        result = index.stats(agent_id=agent, since=since)
    if as_json:
        return _emit_json(result)
    rate = f"{result.failure_rate:.1%}" if result.failure_rate is not None else "n/a (no runs recorded)"
    out.print(f"runs: {result.runs}   failed runs: {result.failed_runs}   failure rate: {rate}")
    out.print(f"failures: {result.failures} in {result.sessions_with_failures} sessions, {result.patterns} patterns")
    table = _table("by node", "node", "failures", "sessions")
    for n in result.by_node:
        table.add_row(n.node_id or "-", str(n.failures), str(n.sessions))
    out.print(table)
    if result.by_kind:
        out.print("by kind: " + ", ".join(f"{k}={v}" for k, v in result.by_kind.items()))
    if result.by_version:
        versions = _table("by agent version", "agent", "version", "first seen", "runs", "failed", "rate", "failures",
                          wide="")
        for v in result.by_version:
            versions.add_row(v.agent_id or "-", v.agent_version or "-", _when(v.first_seen), str(v.runs),
                             str(v.failed_runs), f"{v.failure_rate:.1%}" if v.failure_rate is not None else "-",
                             str(v.failures))
        out.print(versions)


@app.command()
def advise(db: Db = None, as_json: Json = False, agent: Agent = None,
           window: Annotated[str, typer.Option("--window", help="Look back this far: 24h, 7d, 2w.")] = "7d",
           min_sessions: Annotated[int, typer.Option("--min-sessions", min=1,
                                                     help="Sessions that make a pattern recurring.")] = 3) -> None:
    """Patterns that warrant changing the agent (or a human), by Hive's evolution rules, with the evidence."""
    with _index(db) as index:
        found = index.advise(agent_id=agent, window=window, min_sessions=min_sessions)
    if as_json:
        return _emit_json(found)
    if not found:
        out.print(f"nothing to change: no pattern in the last {window} meets an evolution trigger")
        return
    for a in found:
        e = a.evidence
        share = f", {e.session_share:.0%} of runs" if e.session_share is not None else ""
        action = "[bold red]evolve[/bold red]" if a.action == "evolve" else "[bold yellow]human[/bold yellow]"
        out.print(f"{action} [bold]{a.fingerprint}[/bold] {a.agent_id or '-'}/{a.node_id or '-'} {a.kind}: "
                  f"{', '.join(a.triggers) or '-'}")
        out.print(f"  {a.error_type}: {_cut(a.sample_message, 100)}")
        out.print(f"  {e.failures} failures in {e.sessions} sessions{share}; why: {a.reason}")
        if e.last_resolution is not None:
            out.print(f"  last fix: {_cut(e.last_resolution.resolution, 60)} -> {e.last_fix_verdict}")
        out.print(f"  examples: {', '.join(i[:12] for i in e.example_failure_ids)}; "
                  f"next: hive-failures diagnose {a.fingerprint}")


@app.command("fix-effect")
def fix_effect(fingerprint: Annotated[str, typer.Argument(help="A pattern fingerprint or a unique prefix.")],
               db: Db = None, as_json: Json = False) -> None:
    """Did each fix of a pattern work: its rate per run before the fix's version and from it on."""
    with _index(db) as index:
        result = index.fix_effect(fingerprint)
    if as_json:
        return _emit_json(result)
    if not result.effects:
        out.print(f"no resolution recorded for {result.fingerprint}")
        return
    table = _table(f"fix effect of {result.fingerprint}", "resolved", "version", "before", "after", "verdict",
                   "resolution", wide="resolution")
    for e in result.effects:
        rate = lambda r: f"{r.sessions}/{r.runs}" + (f" ({r.rate:.1%})" if r.rate is not None else "")  # noqa: E731
        table.add_row(_when(e.resolution.resolved_at), e.resolution.agent_version or "-", rate(e.before),
                      rate(e.after), e.verdict, f"{e.resolution.resolution} ({e.reason})")
    out.print(table)


@app.command()
def resolve(fingerprint: Annotated[str, typer.Argument(help="A pattern fingerprint or a unique prefix.")],
            resolution: Annotated[str, typer.Argument(help="What was done, e.g. 'added input validation'.")],
            db: Db = None, as_json: Json = False,
            agent_version: Annotated[Optional[str], typer.Option("--agent-version")] = None,
            no_evolution: Annotated[bool, typer.Option(
                "--no-evolution", help="Fixed without evolving the agent.")] = False) -> None:
    """Record what was done about a pattern, so the next look does not start blind."""
    with _index(db) as index:
        result = index.resolve(fingerprint, resolution, evolution_triggered=not no_evolution,
                               agent_version=agent_version)
    if as_json:
        return _emit_json(result)
    out.print(f"resolved {result.fingerprint}: {result.resolution}")


@app.command()
def diagnose(fingerprint: Annotated[str, typer.Argument(help="A pattern fingerprint or a unique prefix.")],
             db: Db = None, as_json: Json = False,
             budget: Annotated[int, typer.Option("--budget", min=1000, help="Size limit in characters.")] = 12_000
             ) -> None:
    """What a coding agent needs to change the agent for a pattern, in Markdown (or --json)."""
    with _index(db) as index:
        result = index.diagnose(fingerprint, budget_chars=budget)
    if as_json:
        return _emit_json(result)
    typer.echo(result.markdown)


@app.command()
def mcp(db: Db = None,
        http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP on loopback, not stdio.")] = False,
        port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8765) -> None:
    """Serve the index to the Queen (or any MCP client) as tools, over stdio by default."""
    from .mcp_server import serve

    serve(db, http=http, port=port)


queen = typer.Typer(help="Give Hive's Queen the failure tools.", no_args_is_help=True)
app.add_typer(queen, name="queen")


@queen.command("install")
def queen_install(db: Db = None) -> None:
    """Register the MCP server in Hive's MCP registry; the Queen loads it at her next session."""
    from .queen import install

    out.print(install(db))


@queen.command("uninstall")
def queen_uninstall() -> None:
    """Remove the MCP server from Hive's MCP registry."""
    from .queen import uninstall

    out.print(uninstall())


@app.command()
def migrate(db: Db = None) -> None:
    """Upgrade an index to this version's schema. Readers never do; at 1M failures it takes about half a minute."""
    try:
        if not index_path(db).exists():
            raise FailureIndexError(f"no failure index at {index_path(db)} (set HIVE_FAILURES_DB or pass --db)")
    except FailureIndexError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with _index(db, create=True) as index:
        out.print(f"{index.path}: schema version {index.schema_version}")


@app.command()
def demo(db: Db = None) -> None:
    """The whole loop on real Hive (a scripted LLM: no key, no network): failures, advice, the Queen's fix, its
    effect, a regression."""
    try:
        from .demo import main as run_demo
    except ImportError as exc:
        err.print(f"[red]error:[/red] the demo needs Hive: pip install 'hive-otel-failures[hive]' ({exc})")
        raise typer.Exit(2) from None
    run_demo(db)


def main() -> None:
    app()
