"""``hive-failures``: the failure index for people (tables) and agents (``--json``).

Exit codes, one convention for every command: 0 done; 1 not found (no failure or pattern has
that id or fingerprint); 2 the input cannot be used (a missing, corrupt or foreign index, an
ambiguous or too short prefix, a bad option). With ``--json`` an error is a JSON object on
stdout, ``{"error": ..., "code": N}``, with the same exit code.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:  # imported by the commands that use them: --help and --json answers stay fast
    from rich.console import Console

    from ..index import FailureIndex, Pattern
    from ..record import FailureRecord

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
MIN_ID_PREFIX = 6  # the index looks failure ids up by prefix from this length on
_FAILURE_SCAN = 1000  # newest failures searched for the candidates of a failure id prefix
_PATTERN_SCAN = 10_000  # patterns searched for the candidates of a fingerprint prefix
_CANDIDATES_SHOWN = 20

EPILOG = ("Exit codes: 0 done; 1 not found (no failure or pattern has that id or fingerprint); "
          "2 the input cannot be used (a missing, corrupt or foreign index, an ambiguous or too short prefix, "
          'a bad option). With --json, errors are JSON on stdout too: {"error": "...", "code": N}.')


class _JsonErrorsGroup(click.Group):
    """Usage errors of a command run with ``--json`` (a bad option value, say) come out as JSON as well.

    The list of commands gives each one's first sentence whole, wrapped, rather than cut at 80 columns.
    """

    group_class = type  # subgroups (queen) behave alike

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:  # no command: its help, as a usage error (2) on any
            click.echo(ctx.get_help(), err=True)    # click (8.1 exits 0 where 8.2 on exits 2)
            ctx.exit(EXIT_BAD_INPUT)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, command) for name in self.list_commands(ctx)
                    if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if commands:
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit=1000)) for name, command in commands])

    def invoke(self, ctx: click.Context) -> Any:
        wants_json = "--json" in ctx.args
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if not wants_json:
                raise
            _echo_json_error(exc.format_message(), exc.exit_code)
            raise click.exceptions.Exit(exc.exit_code) from None


@functools.cache
def _out() -> Console:
    """Rich for people only: an agent's --json answer does not import it.

    Piped output gets a 140-column page rather than rich's 80, so tables stay readable in logs.
    Nothing printed is markup: messages, paths and ids keep their [brackets] and :colons:.
    """
    from rich.console import Console

    return Console(width=shutil.get_terminal_size(fallback=(140, 24)).columns, markup=False, emoji=False)


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, markup=False, emoji=False)


# Options most commands share; each use makes its own click.Option.
db_option = click.option(
    "--db", help="Index path, sqlite:/// or postgresql:// URL [default: HIVE_FAILURES_DB or $HIVE_HOME/failures.db]")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (errors too).")
agent_option = click.option("--agent", help="Only this agent id.")
since_option = click.option("--since", help="Window: 30m, 24h, 7d or an ISO 8601 time.")

T = TypeVar("T")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version as distribution_version

    try:
        return distribution_version("hive-otel-failures")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        click.echo(f"hive-failures {_package_version()}")
        ctx.exit()


# Plain click, not typer: typer (>= 0.22) builds a pydantic TypeAdapter per option, and it and
# its rich help took most of a query's start-up; click answers --help in a third of the time.
@click.group("hive-failures", cls=_JsonErrorsGroup, epilog=EPILOG, context_settings={"show_default": True})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Print the package version and exit.")
def app() -> None:
    """Query the local index of Hive agent failures."""


# --- errors -----------------------------------------------------------------------------------
def _echo_json_error(message: str, code: int, candidates: Sequence[str] | None = None) -> None:
    payload: dict[str, Any] = {"error": message, "code": code}
    if candidates is not None:
        payload["candidates"] = list(candidates)
    click.echo(json.dumps(payload, ensure_ascii=False))


def _fail(message: str, code: int, as_json: bool, *, candidates: Sequence[str] | None = None,
          details: Sequence[str] = ()) -> NoReturn:
    """One error, as ``error: ...`` on stderr for people or as JSON on stdout for agents, and its exit code."""
    if as_json:
        _echo_json_error(message, code, candidates)
    else:
        from rich.text import Text

        _err().print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
        for line in details:
            _err().print(Text(f"  {line}"), soft_wrap=True)
    raise click.exceptions.Exit(code)


@contextmanager
def _index(db: str | None, as_json: bool = False, *, create: bool = False) -> Iterator[FailureIndex]:
    from ..index import FailureIndexError, open_index

    try:
        index = open_index(db, create=create)
    except FailureIndexError as exc:
        _fail(str(exc), EXIT_BAD_INPUT, as_json)
    try:
        yield index
    except FailureIndexError as exc:
        _fail(str(exc), EXIT_BAD_INPUT, as_json)
    finally:
        index.close()


def _n(count: int, noun: str) -> str:
    """``1 pattern``, ``2 patterns``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- ids and fingerprints: prefixes, candidates, not found ---------------------------------------
def _failures_starting(index: FailureIndex, prefix: str) -> tuple[list[FailureRecord], bool]:
    """Failures whose id starts with ``prefix`` among the newest ``_FAILURE_SCAN``, and whether all were searched."""
    newest = index.recent(limit=_FAILURE_SCAN)
    return [r for r in newest if r.failure_id.startswith(prefix)], len(newest) < _FAILURE_SCAN


def _failure_line(r: FailureRecord) -> str:
    return f"{r.failure_id}  {_when(r.timestamp)}  {r.agent_id or '-'}/{r.node_id or '-'}  {r.error_type}"


def _find_failure(index: FailureIndex, failure_id: str, as_json: bool) -> FailureRecord:
    from ..index import FailureIndexError

    try:
        record = index.get(failure_id)
    except FailureIndexError as exc:  # an ambiguous prefix, or an index that cannot be read
        matches, _ = _failures_starting(index, failure_id)
        if len(matches) < 2:
            raise exc
        _ambiguous(f"failure id prefix {failure_id!r}", "failure", [r.failure_id for r in matches],
                   [_failure_line(r) for r in matches], as_json)
    if record is not None:
        return record
    if len(failure_id) >= MIN_ID_PREFIX:
        _fail(f"no failure with id {failure_id!r}", EXIT_NOT_FOUND, as_json)
    matches, complete = _failures_starting(index, failure_id)
    message = f"failure id prefix {failure_id!r} is too short: give at least {MIN_ID_PREFIX} characters"
    if len(matches) == 1:
        message += f", e.g. {matches[0].failure_id[:12]}"
    elif matches:
        where = "" if complete else f" of the newest {_FAILURE_SCAN}"
        message += f"; {_n(len(matches), 'failure')}{where} start with it{_first_shown(len(matches))}"
    _fail(message, EXIT_BAD_INPUT, as_json, candidates=[r.failure_id for r in matches][:_CANDIDATES_SHOWN],
          details=[_failure_line(r) for r in matches][:_CANDIDATES_SHOWN])


def _patterns_starting(index: FailureIndex, fingerprint: str) -> list[Pattern]:
    """Patterns whose fingerprint starts with ``fingerprint``, or with ``v1:fingerprint`` when it names no version."""
    from ..fingerprint import with_version

    starts = (fingerprint, with_version(fingerprint))
    return [p for p in index.patterns(limit=_PATTERN_SCAN) if p.fingerprint.startswith(starts)]


def _with_pattern(index: FailureIndex, fingerprint: str, as_json: bool, call: Callable[[str], T]) -> T:
    """``call`` with the pattern a fingerprint, a unique prefix or either without ``v1:`` names.

    The index answers exact fingerprints and unique prefixes; only when it finds no single pattern
    does the CLI look further: without the version, or to say why (none: 1, several: 2).
    """
    from ..index import FailureIndexError

    try:
        return call(fingerprint)
    except FailureIndexError as exc:
        error = exc
    matches = _patterns_starting(index, fingerprint)
    if not matches:
        _fail(f"no pattern with fingerprint {fingerprint!r}", EXIT_NOT_FOUND, as_json)
    if len(matches) > 1:
        _ambiguous(f"fingerprint prefix {fingerprint!r}", "pattern", [p.fingerprint for p in matches],
                   [f"{p.fingerprint}  {_n(p.count, 'failure')}  {p.agent_id or '-'}/{p.node_id or '-'}  "
                    f"{p.error_type}" for p in matches], as_json)
    if matches[0].fingerprint == fingerprint:  # the pattern is there: the error was about something else
        raise error
    return call(matches[0].fingerprint)


def _first_shown(count: int) -> str:
    return f" (the first {_CANDIDATES_SHOWN} listed)" if count > _CANDIDATES_SHOWN else ""


def _ambiguous(what: str, noun: str, ids: Sequence[str], lines: Sequence[str], as_json: bool) -> NoReturn:
    _fail(f"{what} is ambiguous: {_n(len(ids), noun)} match{_first_shown(len(ids))}; give more characters",
          EXIT_BAD_INPUT, as_json, candidates=ids[:_CANDIDATES_SHOWN], details=lines[:_CANDIDATES_SHOWN])


# --- output -------------------------------------------------------------------------------------
def _emit_json(value: Any) -> None:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
    elif isinstance(value, list):
        data = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    else:
        data = value
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _print_rows(title: str, columns: Sequence[tuple[str, int | None]], rows: Sequence[Sequence[str]]) -> None:
    """A table whose kept columns (width None: ids, fingerprints, counts, times) are never cut nor wrapped.

    The others wrap, each needing at least its given width. When the page cannot give that (80
    columns for list and patterns), each row becomes a short block instead, its first column
    leading, its last (the wide text) on indented lines below: nothing is cut either way.
    """
    from rich.cells import cell_len
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text
    widths = [max(cell_len(name), *(cell_len(row[i]) for row in rows)) for i, (name, _) in enumerate(columns)]
    needed = sum(w if least is None else min(w, least) for w, (_, least) in zip(widths, columns))
    needed += 3 * len(columns) + 1  # a cell's padding and its border
    if needed <= _out().size.width:
        table = Table(title=title, title_justify="left")
        for (name, least), width in zip(columns, widths):
            if least is None:
                table.add_column(name, no_wrap=True, min_width=width)
            else:
                table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        _out().print(table)
        return
    _out().print(Text(title, style="italic"))
    body = columns[-1][1] is not None and len(columns) > 1
    width = _out().size.width
    for row in rows:
        items = [f"{name}: {value}" for (name, _), value in zip(columns[1:], row[1:])]
        lines, line = [], row[0]
        for item in items[:len(items) - body]:  # a "name: value" is never split between lines
            if cell_len(line) + 2 + cell_len(item) <= width:
                line += f"  {item}"
            else:
                lines.append(line)
                line = f"    {item}"
        lines.append(line)
        for text in lines:
            _out().print(Text(text), overflow="fold")
        if body:
            _out().print(Padding(Text(items[-1]), (0, 0, 0, 4), expand=False), overflow="fold")


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%m-%d %H:%M:%S") if value else "-"


def _cut(text: str | None, n: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --- commands -----------------------------------------------------------------------------------
@app.command("list")
@db_option
@json_option
@agent_option
@click.option("--node", help="Only this node id.")
@click.option("--error-type", help="Only this error type.")
@click.option("--session", help="Only this session id.")
@since_option
@click.option("--limit", type=click.IntRange(min=0), default=20, help="At most this many failures.")
def list_failures(db: str | None, as_json: bool, agent: str | None, node: str | None, error_type: str | None,
                  session: str | None, since: str | None, limit: int) -> None:
    """The most recent failures, newest first."""
    with _index(db, as_json) as index:
        records = index.recent(agent_id=agent, node_id=node, error_type=error_type, session_id=session,
                               since=since, limit=limit)
    if as_json:
        return _emit_json(records)
    _print_rows(_n(len(records), "recent failure"),
                [("id", None), ("when", None), ("agent/node", 12), ("kind", 9), ("attempts", None), ("error", 24)],
                [(r.failure_id[:12], _when(r.timestamp), f"{r.agent_id or '-'}/{r.node_id or '-'}", str(r.kind),
                  str(r.attempts), f"{r.error_type}: {_cut(r.error_message, 80)}") for r in records])


@app.command()
@click.argument("failure_id")
@db_option
@json_option
def show(failure_id: str, db: str | None, as_json: bool) -> None:
    """One failure in full: error, attempts, judge feedback, context, tool calls, agent snapshot.

    FAILURE_ID is a failure id or a unique prefix (6+ chars).
    """
    with _index(db, as_json) as index:
        record = _find_failure(index, failure_id, as_json)
    if as_json:
        return _emit_json(record)
    from rich.table import Table

    data = record.model_dump(mode="json")
    table = Table(show_header=False, title=f"failure {record.failure_id}", title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if value in (None, [], {}, ""):
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    _out().print(table)


@app.command()
@db_option
@json_option
@agent_option
@since_option
@click.option("--limit", type=click.IntRange(min=0), default=50, help="At most this many patterns.")
def patterns(db: str | None, as_json: bool, agent: str | None, since: str | None, limit: int) -> None:
    """Failures grouped by fingerprint: what keeps failing, where, since when, what was done."""
    with _index(db, as_json) as index:
        found = index.patterns(agent_id=agent, since=since, limit=limit)
    if as_json:
        return _emit_json(found)
    rows = []
    for p in found:
        status = "transient" if p.transient else "systematic"
        if p.resolution:
            status = "recurred after fix" if p.recurred_after_resolution else f"resolved: {_cut(p.resolution, 30)}"
        rows.append((p.fingerprint, str(p.count), str(p.sessions), f"{p.agent_id or '-'}/{p.node_id or '-'}", p.kind,
                     status, _when(p.last_seen), f"{p.error_type}: {_cut(p.sample_message, 80)}"))
    _print_rows(_n(len(found), "failure pattern"),
                [("fingerprint", None), ("count", None), ("sessions", None), ("agent/node", 12), ("kind", 9),
                 ("status", 10), ("last seen", None), ("error", 24)], rows)


@app.command()
@db_option
@json_option
@agent_option
@since_option
def stats(db: str | None, as_json: bool, agent: str | None, since: str | None) -> None:
    """Runs, failed runs, failure rate and the nodes where failures happen."""
    with _index(db, as_json) as index:
        result = index.stats(agent_id=agent, since=since)
    if as_json:
        return _emit_json(result)
    rate = f"{result.failure_rate:.1%}" if result.failure_rate is not None else "n/a (no runs recorded)"
    _out().print(f"runs: {result.runs}   failed runs: {result.failed_runs}   failure rate: {rate}")
    _out().print(f"failures: {result.failures} in {_n(result.sessions_with_failures, 'session')}, "
              f"{_n(result.patterns, 'pattern')}")
    _print_rows("by node", [("node", 16), ("failures", None), ("sessions", None)],
                [(n.node_id or "-", str(n.failures), str(n.sessions)) for n in result.by_node])
    if result.by_kind:
        _out().print("by kind: " + ", ".join(f"{k}={v}" for k, v in result.by_kind.items()))
    if result.by_version:
        _print_rows("by agent version",
                    [("agent", 12), ("version", 10), ("first seen", None), ("runs", None), ("failed", None),
                     ("rate", None), ("failures", None)],
                    [(v.agent_id or "-", v.agent_version or "-", _when(v.first_seen), str(v.runs),
                      str(v.failed_runs), f"{v.failure_rate:.1%}" if v.failure_rate is not None else "-",
                      str(v.failures)) for v in result.by_version])


@app.command()
@db_option
@json_option
@agent_option
@click.option("--window", default="7d", help="Look back this far: 24h, 7d, 2w.")
@click.option("--min-sessions", type=click.IntRange(min=1), default=3, help="Sessions that make a pattern recurring.")
def advise(db: str | None, as_json: bool, agent: str | None, window: str, min_sessions: int) -> None:
    """Patterns that warrant changing the agent (or a human), by Hive's evolution rules, with the evidence."""
    with _index(db, as_json) as index:
        found = index.advise(agent_id=agent, window=window, min_sessions=min_sessions)
    if as_json:
        return _emit_json(found)
    if not found:
        _out().print(f"nothing to change: no pattern in the last {window} meets an evolution trigger")
        return
    from rich.text import Text

    for a in found:
        e = a.evidence
        share = f", {e.session_share:.0%} of runs" if e.session_share is not None else ""
        action = ("evolve", "bold red") if a.action == "evolve" else ("human", "bold yellow")
        _out().print(Text.assemble(action, " ", (a.fingerprint, "bold"),
                                   f" {a.agent_id or '-'}/{a.node_id or '-'} {a.kind}: {', '.join(a.triggers) or '-'}"))
        _out().print(f"  {a.error_type}: {_cut(a.sample_message, 100)}")
        _out().print(f"  {_n(e.failures, 'failure')} in {_n(e.sessions, 'session')}{share}; why: {a.reason}")
        if e.last_resolution is not None:
            _out().print(f"  last fix: {_cut(e.last_resolution.resolution, 60)} -> {e.last_fix_verdict}")
        _out().print(f"  examples: {', '.join(i[:12] for i in e.example_failure_ids)}; "
                  f"next: hive-failures diagnose {a.fingerprint}")


fingerprint_argument = click.argument("fingerprint")


@app.command("fix-effect")
@fingerprint_argument
@db_option
@json_option
def fix_effect(fingerprint: str, db: str | None, as_json: bool) -> None:
    """Did each fix of a pattern work: its rate per run before the fix's version and from it on.

    FINGERPRINT is a pattern fingerprint or a unique prefix (v1: may be left out).
    """
    with _index(db, as_json) as index:
        result = _with_pattern(index, fingerprint, as_json, index.fix_effect)
    if as_json:
        return _emit_json(result)
    if not result.effects:
        _out().print(f"no resolution recorded for {result.fingerprint}")
        return

    def rate(r: Any) -> str:
        return f"{r.sessions}/{r.runs}" + (f" ({r.rate:.1%})" if r.rate is not None else "")

    _print_rows(f"fix effect of {result.fingerprint}",
                [("resolved", None), ("version", 10), ("before", None), ("after", None), ("verdict", None),
                 ("resolution", 24)],
                [(_when(e.resolution.resolved_at), e.resolution.agent_version or "-", rate(e.before), rate(e.after),
                  e.verdict, f"{e.resolution.resolution} ({e.reason})") for e in result.effects])


@app.command()
@fingerprint_argument
@click.argument("resolution")
@db_option
@json_option
@click.option("--agent-version",
              help="The agent version that carries the fix; fix-effect compares runs from it on.")
@click.option("--no-evolution", is_flag=True, help="Fixed without evolving the agent.")
def resolve(fingerprint: str, resolution: str, db: str | None, as_json: bool, agent_version: str | None,
            no_evolution: bool) -> None:
    """Record what was done about a pattern, so the next look does not start blind.

    FINGERPRINT is a pattern fingerprint or a unique prefix (v1: may be left out); RESOLUTION says
    what was done, e.g. 'added input validation'.
    """
    if not resolution.strip():
        _fail("a resolution needs a description of what was done", EXIT_BAD_INPUT, as_json)
    with _index(db, as_json) as index:
        result = _with_pattern(index, fingerprint, as_json, lambda fp: index.resolve(
            fp, resolution, evolution_triggered=not no_evolution, agent_version=agent_version))
    if as_json:
        return _emit_json(result)
    _out().print(f"resolved {result.fingerprint}: {result.resolution}")


@app.command()
@fingerprint_argument
@db_option
@json_option
@click.option("--budget", type=click.IntRange(min=1000), default=12_000, help="Size limit in characters.")
def diagnose(fingerprint: str, db: str | None, as_json: bool, budget: int) -> None:
    """What a coding agent needs to change the agent for a pattern, in Markdown (or --json).

    FINGERPRINT is a pattern fingerprint or a unique prefix (v1: may be left out).
    """
    with _index(db, as_json) as index:
        result = _with_pattern(index, fingerprint, as_json, lambda fp: index.diagnose(fp, budget_chars=budget))
    if as_json:
        return _emit_json(result)
    click.echo(result.markdown)


@app.command()
@db_option
@click.option("--http", is_flag=True, help="Serve streamable HTTP on loopback, not stdio.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, help="The loopback port for --http.")
def mcp(db: str | None, http: bool, port: int) -> None:
    """Serve the index to the Queen (or any MCP client) as tools, over stdio by default."""
    from .mcp_server import serve

    serve(db, http=http, port=port)


@app.command()
@db_option
@click.option("--host", default="127.0.0.1",
              help="Address to listen on; off loopback HIVE_FAILURES_INGEST_TOKEN is required.")
@click.option("--port", type=click.IntRange(0, 65535), default=4318, help="OTLP/HTTP port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=4317, help="OTLP/gRPC port.")
@click.option("--max-request-mib", type=click.IntRange(min=1), default=16,
              help="Largest request body accepted (compressed or not).")
@click.option("--queue-size", type=click.IntRange(min=1), default=20_000,
              help="Records accepted but not yet committed; beyond, producers retry.")
def ingest(db: str | None, host: str, port: int, grpc_port: int, max_request_mib: int, queue_size: int) -> None:
    """Receive failures and run outcomes from many hosts over OTLP (HTTP and gRPC) into one index."""
    from .ingest import IngestError, serve

    try:
        serve(db, host=host, port=port, grpc_port=grpc_port, max_request_bytes=max_request_mib * 1024 * 1024,
              queue_records=queue_size)
    except IngestError as exc:
        _fail(str(exc), EXIT_BAD_INPUT, False)


@app.group()
def queen() -> None:
    """Give Hive's Queen the failure tools."""


@queen.command("install")
@db_option
def queen_install(db: str | None) -> None:
    """Register the MCP server in Hive's MCP registry; the Queen loads it at her next session."""
    from .queen import install

    _out().print(install(db))


@queen.command("uninstall")
def queen_uninstall() -> None:
    """Remove the MCP server from Hive's MCP registry."""
    from .queen import uninstall

    _out().print(uninstall())


@app.command()
@db_option
def migrate(db: str | None) -> None:
    """Upgrade an index to this version's schema. Readers never do; at 1M failures it takes about half a minute."""
    from ..index import FailureIndexError, default_location, index_path, is_server

    if not is_server(db or default_location()):  # a database on a server exists or the connection says so
        try:
            if not index_path(db).exists():
                raise FailureIndexError(f"no failure index at {index_path(db)} (set HIVE_FAILURES_DB or pass --db)")
        except FailureIndexError as exc:
            _fail(str(exc), EXIT_BAD_INPUT, False)
    with _index(db, create=True) as index:
        _out().print(f"{index.path}: schema version {index.schema_version}")


# --- retention and portability -------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@app.command()
@click.option("--older-than", required=True,
              help="Delete failures older than this (and runs that ended before): 90d, 12w, or an ISO 8601 time.")
@db_option
@json_option
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
def prune(older_than: str, db: str | None, as_json: bool, dry_run: bool) -> None:
    """Delete old failures, their unused snapshots and old runs; patterns, counters, rates and fixes stay."""
    with _index(db, as_json) as index:
        report = index.prune(older_than, dry_run=dry_run)
    if as_json:
        return _emit_json(report)
    verb = "would remove" if report.dry_run else "removed"
    _out().print(f"{verb} {_n(report.failures_removed, 'failure')}, {_n(report.blobs_removed, 'snapshot')} "
                 f"({_size(report.blob_bytes_removed)} of content), {_n(report.runs_removed, 'run')} from before "
                 f"{report.cut.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
    _out().print(f"kept {_n(report.failures_kept, 'failure')}, {_n(report.runs_kept, 'run')}, "
                 f"{_n(report.patterns_kept, 'pattern')} with their counters "
                 f"({report.patterns_without_failures} with no failure left), "
                 f"{_n(report.resolutions_kept, 'resolution')}")


def _gzipped(path: str) -> bool:
    return path.endswith(".gz")


@app.command("export")
@click.argument("output", default="-")
@db_option
@json_option
def export_index(output: str, db: str | None, as_json: bool) -> None:
    """Write the whole index as JSON lines (failures with content, runs, resolutions, patterns and counters).

    OUTPUT is the file to write (.gz compresses), or - for stdout; then the summary goes to stderr
    (as JSON with --json).
    """
    import os
    import sys


    to_stdout = output == "-"
    part = f"{output}.part"
    with _index(db, as_json) as index:
        try:
            if to_stdout:
                report = index.export_jsonl(sys.stdout)
                sys.stdout.flush()
            else:  # written aside and renamed: never half a file under the name asked for
                if _gzipped(output):
                    import gzip

                    stream = gzip.open(part, "wt", encoding="utf-8")
                else:
                    stream = open(part, "w", encoding="utf-8")  # noqa: SIM115
                try:
                    with stream:
                        report = index.export_jsonl(stream)
                    os.replace(part, output)
                except BaseException:
                    if os.path.exists(part):
                        os.unlink(part)
                    raise
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_BAD_INPUT, as_json)
    summary = (f"exported {_n(report.failures, 'failure')}, {_n(report.runs, 'run')}, "
               f"{_n(report.resolutions, 'resolution')}, {_n(report.patterns, 'pattern')} "
               f"({report.patterns_with_pruned_counts} with pruned counts), run counters of "
               f"{_n(report.agents, 'agent')}" + ("" if to_stdout else f" to {output}"))
    if as_json:
        text = json.dumps(report.model_dump(mode="json"), indent=2)
        click.echo(text, err=to_stdout)
    elif to_stdout:
        _err().print(summary, soft_wrap=True)
    else:
        _out().print(summary, soft_wrap=True)


@app.command("import")
@click.argument("source", default="-")
@db_option
@json_option
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, help="Failures written per transaction.")
def import_index(source: str, db: str | None, as_json: bool, batch_size: int) -> None:
    """Read an export into the index (made if missing); what it holds already is skipped, so twice is once.

    SOURCE is an export to read (.gz is decompressed), or - for stdin.
    """
    import sys


    if source == "-" and sys.stdin.isatty():
        _fail("import reads an export from a file or a pipe: hive-failures import FILE, or ... | hive-failures "
              "import -", EXIT_BAD_INPUT, as_json)
    try:
        if source == "-":
            stream = sys.stdin
        elif _gzipped(source):
            import gzip

            stream = gzip.open(source, "rt", encoding="utf-8")
        else:
            stream = open(source, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_BAD_INPUT, as_json)
    with _index(db, as_json, create=True) as index:
        try:
            with stream:
                report = index.import_jsonl(stream, batch_size=batch_size)
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            _fail(f"cannot read {source}: {exc}", EXIT_BAD_INPUT, as_json)
    if as_json:
        return _emit_json(report)
    r = report
    _out().print(f"imported {_n(r.failures_added, 'failure')} ({r.failures_skipped} already there), "
                 f"{_n(r.runs_added, 'run')} ({r.runs_skipped} already there), "
                 f"{_n(r.resolutions_added, 'resolution')} ({r.resolutions_skipped} already there)", soft_wrap=True)
    _out().print(f"patterns: {r.patterns_copied} new, {r.patterns_merged} with pruned counts added, "
                 f"{r.patterns_unchanged} unchanged; run counters of agents: {r.agents_copied} new, "
                 f"{r.agents_merged} merged, {r.agents_unchanged} unchanged", soft_wrap=True)


@app.command()
@db_option
def demo(db: str | None) -> None:
    """The whole loop on real Hive (a scripted LLM: no key, no network): failures, advice, the Queen's fix, its
    effect, a regression."""
    try:
        from .demo import main as run_demo
    except ImportError as exc:
        _fail(f"the demo needs Hive: pip install 'hive-otel-failures[hive]' ({exc})", EXIT_BAD_INPUT, False)
    run_demo(db)


def main() -> None:
    app(prog_name="hive-failures")
