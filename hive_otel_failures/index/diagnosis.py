"""The diagnosis bundle: what a coding agent needs to change an agent for one failure pattern.

Hive's evolution guide lists it: the failing node and its spec, the goal with its
constraints and criteria, the attempts with the judge's feedback, the tools tried, the
memory at the time, what was already tried and whether it worked. The bundle is Markdown
fitted to a size budget (a coding agent's context is finite): the least useful parts are
cut first, and it says what it cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..record import FailureRecord
from .models import Advice, Diagnosis, FixEffect, Pattern

# Cut first to last. The summary goes only if nothing else is left to cut.
_TRIM_ORDER = ("Input context", "Definition diff", "Memory / data buffer", "Tool calls tried", "Error",
               "Resolutions", "Attempts and judge feedback", "Goal", "Node spec", "Traces", "Why change the agent",
               "Failure")
_MIN_KEPT = 200  # a section cut below this is left out instead
MIN_DIAGNOSIS_CHARS = 1000  # below this not even the summary and the advice fit
_CUT = "\n… (cut)"


@dataclass
class Definitions:
    """The definitions a diff needs: where the pattern first failed, and the newest the index holds.

    Snapshots are stored with failures, so the newest version seen in runs may have none.
    """

    first_failing_version: str | None
    first_failing: Any
    newest_stored_version: str | None
    newest_stored: Any
    newest_version: str | None  # the version first seen last, in runs


@dataclass
class _Section:
    title: str
    body: str
    code: str | None = None  # a fence language: the body is cut inside its fence

    def render(self) -> str:
        body = f"```{self.code}\n{self.body}\n```" if self.code is not None else self.body
        return f"## {self.title}\n\n{body}\n"


def _json(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str)


def _node_spec(snapshot: Any, node_id: str | None) -> Any:
    if not isinstance(snapshot, dict):
        return None
    graph = snapshot.get("graph")
    if isinstance(graph, dict):
        for node in graph.get("nodes") or []:
            if isinstance(node, dict) and node.get("id") == node_id:
                return node
        return {k: graph.get(k) for k in ("id", "entry_node", "terminal_nodes") if k in graph} | {
            "nodes": [n.get("id") for n in graph.get("nodes") or [] if isinstance(n, dict)]}
    spec = snapshot.get("agent_spec")
    if isinstance(spec, dict):
        return {**spec, "model": snapshot.get("model")}
    return None


def _definition_diff(definitions: Definitions | None) -> str:
    if definitions is None or definitions.first_failing is None:
        return "No definition snapshot is stored for this pattern."
    d = definitions
    first = d.first_failing_version or "unknown version"
    if d.first_failing_version == d.newest_stored_version:
        text = f"The pattern first failed in {first}, the newest definition stored."
    else:
        import difflib  # only a diagnosis with two definitions diffs them

        lines = difflib.unified_diff(_json(d.first_failing).splitlines(), _json(d.newest_stored).splitlines(),
                                     fromfile=f"{first} (first failed)", tofile=d.newest_stored_version or "newest",
                                     lineterm="", n=2)
        text = "\n".join(lines) or f"{first} and {d.newest_stored_version} define the agent alike."
    if d.newest_version and d.newest_version != d.newest_stored_version:
        text += (f"\nRuns of a newer version, {d.newest_version}, are recorded; its definition is stored only once "
                 "it fails.")
    return text


def _advice_text(advice: Advice | None) -> str:
    if advice is None:
        return ("No open advice for this pattern in the advice window: it is transient, one-off, resolved and "
                "not back, or not seen in the window.")
    e = advice.evidence
    share = f" ({e.session_share:.0%} of the agent's {e.agent_runs} runs)" if e.session_share is not None else ""
    lines = [f"- action: **{advice.action}**; triggers: {', '.join(advice.triggers) or 'none'}",
             f"- why: {advice.reason}",
             f"- {e.failures} failures in {e.sessions} sessions{share}, {e.first_seen:%Y-%m-%d %H:%M} to "
             f"{e.last_seen:%Y-%m-%d %H:%M} UTC"]
    if e.success_rate_recent is not None and e.success_rate_previous is not None:
        p = f", p={e.success_p_value:.2g}" if e.success_p_value is not None else ""
        lines.append(f"- agent success rate: {e.success_rate_previous:.1%} in the window before, "
                     f"{e.success_rate_recent:.1%} in this one{p}")
    if e.last_resolution is not None:
        lines.append(f"- last resolution: {e.last_resolution.resolution!r} "
                     f"(version {e.last_resolution.agent_version or 'not named'}): {e.last_fix_verdict}")
    lines.append(f"- example failures: {', '.join(e.example_failure_ids)}")
    return "\n".join(lines)


def _attempts_text(record: FailureRecord) -> str:
    lines = [f"{record.attempts} attempt(s)."]
    for verdict in record.judge_feedback:
        lines.append(f"- attempt {verdict.attempt}: judge {verdict.action}"
                     + (f" ({verdict.judge_type})" if verdict.judge_type else "")
                     + (f": {verdict.feedback}" if verdict.feedback else ""))
    if not record.judge_feedback:
        lines.append("No judge verdicts were recorded.")
    return "\n".join(lines)


def _goal_text(record: FailureRecord) -> str:
    goal = record.graph_snapshot.get("goal") if isinstance(record.graph_snapshot, dict) else None
    parts = []
    if isinstance(goal, dict):
        parts.append(_json({k: goal[k] for k in ("name", "description", "constraints", "success_criteria")
                            if k in goal}))
    if record.constraints_violated:
        parts.append("Constraints violated: " + "; ".join(record.constraints_violated))
    if record.criteria_unmet:
        parts.append("Success criteria unmet: " + "; ".join(record.criteria_unmet))
    return "\n\n".join(parts)


def _resolutions_text(effect: FixEffect) -> str:
    if not effect.effects:
        return "Nothing has been recorded about this pattern yet."
    lines = []
    for e in effect.effects:
        r = e.resolution
        lines.append(f"- {r.resolved_at:%Y-%m-%d %H:%M} UTC, version {r.agent_version or 'not named'}: "
                     f"{r.resolution!r} -> **{e.verdict}** ({e.reason})")
    return "\n".join(lines)


def _traces_text(records: list[FailureRecord], trace_url: str | None) -> str:
    ids = list(dict.fromkeys(r.trace_id for r in records if r.trace_id))
    if not ids:
        return "No trace ids were recorded."
    if not trace_url:
        return "Trace ids (set HIVE_FAILURES_TRACE_URL to get links): " + ", ".join(ids)
    links = []
    for trace_id in ids:
        try:
            links.append(f"- {trace_url.format(trace_id=trace_id)}")
        except (KeyError, IndexError, ValueError):
            return f"HIVE_FAILURES_TRACE_URL must contain {{trace_id}}; trace ids: {', '.join(ids)}"
    return "\n".join(links)


def _sections(pattern: Pattern, records: list[FailureRecord], advice: Advice | None, effect: FixEffect,
              definitions: Definitions | None, trace_url: str | None) -> list[_Section]:
    latest = records[0] if records else None
    summary = (f"- agent: {pattern.agent_id or '-'}; node/worker: {pattern.node_id or '-'}; kind: {pattern.kind}\n"
               f"- {pattern.error_type}: {pattern.sample_message}\n"
               f"- {pattern.count} failures in {pattern.sessions} sessions, first {pattern.first_seen:%Y-%m-%d %H:%M}"
               f", last {pattern.last_seen:%Y-%m-%d %H:%M} UTC; {'transient' if pattern.transient else 'systematic'}")
    if latest is not None:
        summary += f"\n- latest failure: {latest.failure_id} (session {latest.session_id or '-'}, " \
                   f"version {latest.agent_version or '-'})"
    sections = [_Section("Failure", summary), _Section("Why change the agent", _advice_text(advice))]
    if latest is not None:
        spec = _node_spec(latest.graph_snapshot, latest.node_id)
        if spec is not None:
            sections.append(_Section("Node spec", _json(spec), "json"))
        goal = _goal_text(latest)
        if goal:
            sections.append(_Section("Goal", goal))
        sections.append(_Section("Attempts and judge feedback", _attempts_text(latest)))
        if latest.tool_calls:
            sections.append(_Section("Tool calls tried", _json([t.model_dump(exclude_none=True)
                                                                 for t in latest.tool_calls]), "json"))
        error = f"{latest.error_type}: {latest.error_message}"
        sections.append(_Section("Error", error + (f"\n\n{latest.traceback}" if latest.traceback else ""), ""))
    sections.append(_Section("Resolutions", _resolutions_text(effect)))
    if latest is not None:
        if latest.memory_snapshot is not None:
            sections.append(_Section("Memory / data buffer", _json(latest.memory_snapshot), "json"))
        if latest.input_context is not None:
            sections.append(_Section("Input context", _json(latest.input_context), "json"))
        sections.append(_Section("Definition diff", _definition_diff(definitions), "diff"))
    sections.append(_Section("Traces", _traces_text(records, trace_url)))
    return sections


def _render(header: str, sections: list[_Section], trimmed: list[str], budget: int) -> str:
    text = header + "\n".join(s.render() for s in sections)
    if trimmed:  # the note stays short: a tenth of the budget names what it can, ``trimmed`` has the rest
        named = trimmed[:1]
        for item in trimmed[1:]:
            if len(", ".join(named + [item])) > budget // 10:
                break
            named.append(item)
        more = f" (and {len(trimmed) - len(named)} more)" if len(named) < len(trimmed) else ""
        text += f"\n_Trimmed to fit {budget} characters: {', '.join(named)}{more}._\n"
    return text


def build_diagnosis(pattern: Pattern, records: list[FailureRecord], advice: Advice | None, effect: FixEffect,
                    definitions: Definitions | None, *, budget_chars: int, trace_url: str | None) -> Diagnosis:
    """The bundle for ``pattern`` from its newest failures (newest first), fitted to ``budget_chars``."""
    header = f"# Failure pattern {pattern.fingerprint}\n\n"
    sections = _sections(pattern, records, advice, effect, definitions, trace_url)
    trimmed: list[str] = []
    for title in _TRIM_ORDER:
        excess = len(_render(header, sections, trimmed + [f"{title} (left out)"], budget_chars)) - budget_chars
        if excess <= 0:
            break
        section = next((s for s in sections if s.title == title), None)
        if section is None:
            continue
        keep = len(section.body) - excess - len(_CUT)
        if keep >= _MIN_KEPT or title == "Failure":
            trimmed.append(f"{title} (cut)")
            section.body = section.body[:max(keep, 0)] + _CUT
        else:
            trimmed.append(f"{title} (left out)")
            sections.remove(section)
    markdown = _render(header, sections, trimmed, budget_chars)
    if len(markdown) > budget_chars:  # a budget smaller than the headings themselves
        markdown = markdown[:max(budget_chars - len(_CUT), 0)] + _CUT
    return Diagnosis(fingerprint=pattern.fingerprint, agent_id=pattern.agent_id, node_id=pattern.node_id,
                     budget_chars=budget_chars, sections={s.title: s.render() for s in sections}, trimmed=trimmed,
                     markdown=markdown[:budget_chars])
