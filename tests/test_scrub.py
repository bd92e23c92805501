"""Secrets never reach the database; hostile input is stored marked, and never raises."""

from __future__ import annotations

import pytest

import hive_otel_failures as hof
from hive_otel_failures.scrub import Limits, sanitize

from .conftest import db_bytes

SECRETS = {
    "openai": "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789",
    "bearer": "Bearer eyQWERTYUIOPasdfghjkl1234567890",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9secretsecretsecret\n-----END RSA PRIVATE KEY-----",
    "password_value": "hunter2-correct-horse",
    "cookie_value": "sessionid=s3cr3tc00kie",
}
MARKERS = ["Abcdefghijklmnopqrstuvwxyz0123456789", "eyQWERTYUIOPasdfghjkl1234567890", "AKIAIOSFODNN7EXAMPLE",
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "MIIEowIBAAKCAQEA7bq9", "hunter2-correct-horse",
           "s3cr3tc00kie"]


def test_planted_secrets_do_not_reach_the_database_file_and_ids_survive(pipeline) -> None:
    session_id = "session_20261122_030425_ab12cd34"
    agent_id = "agent-eyJ-not-a-jwt-0001"
    with pipeline.tracer.start_as_current_span("node"):
        hof.record_failure(hof.FailureRecord(
            session_id=session_id, agent_id=agent_id, node_id="call_api", failure_id="f" * 32,
            error_type="httpx.HTTPStatusError",
            error_message=f"401 with header Authorization: {SECRETS['bearer']} and key {SECRETS['openai']}",
            input_context={"task": "call the api", "api_key": SECRETS["openai"], "password": SECRETS["password_value"],
                           "nested": [{"Cookie": SECRETS["cookie_value"]}], "request_id": "req_0001"},
            memory_snapshot={"notes": f"aws {SECRETS['aws']} and {SECRETS['pem']}"},
            graph_snapshot={"system_prompt": f"use token {SECRETS['jwt']}"},
            tool_calls=[hof.ToolCallAttempt(tool_name="http_get",
                                            arguments={"url": "https://user:pa55word@api.example.com",
                                                       "headers": {"Authorization": SECRETS["bearer"]}},
                                            result=f"echo {SECRETS['openai']}", is_error=True)],
            judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback=f"leaked {SECRETS['aws']}")],
        ))
    pipeline.flush()
    with pipeline.index() as index:
        (stored,) = index.recent()
    raw = db_bytes(pipeline.db_path)
    for marker in MARKERS + ["pa55word"]:
        assert marker.encode() not in raw, marker
    assert stored.session_id == session_id and stored.agent_id == agent_id and stored.failure_id == "f" * 32
    assert stored.input_context["request_id"] == "req_0001"
    assert stored.input_context["api_key"] == "[REDACTED]"
    assert "[REDACTED]" in stored.error_message
    assert session_id.encode() in raw


BAD_INPUTS = {
    "ten_megabytes": {"blob": "x" * (10 * 1024 * 1024)},
    "cyclic": None,  # built below
    "bytes": {"payload": b"\x00\xffbinary\xfe" * 10},
    "broken_repr": None,
    "invalid_utf8": {"text": b"caf\xe9 \xff".decode("utf-8", "surrogateescape")},
    "sets_and_objects": {"tags": {"b", "a"}, "obj": object(), "tuple": (1, 2)},
}


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


def _bad(name: str):
    if name == "cyclic":
        d: dict = {"name": "loop"}
        d["self"] = d
        return d
    if name == "broken_repr":
        return {"thing": BrokenRepr(), "list": [BrokenRepr()]}
    return BAD_INPUTS[name]


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_hostile_input_is_stored_marked_and_nothing_raises(pipeline, name: str) -> None:
    value = _bad(name)
    with pipeline.tracer.start_as_current_span("node"):
        hof.record_failure(hof.FailureRecord(agent_id="a", node_id=name, error_type="E",
                                             error_message=f"bad {name}",
                                             input_context=value, memory_snapshot=value))
    pipeline.flush()
    assert pipeline.processor.stats().errors == 0
    with pipeline.index() as index:
        (stored,) = index.recent(node_id=name)
    text = repr(stored.input_context)
    expected_marker = {"ten_megabytes": "of 10485760 chars]", "cyclic": "[cycle]", "bytes": "<bytes 90>",
                       "broken_repr": "<unrepresentable BrokenRepr>", "invalid_utf8": "caf",
                       "sets_and_objects": "<object object at"}[name]
    assert expected_marker in text
    if name == "ten_megabytes":
        assert pipeline.db_path.stat().st_size < 2 * 1024 * 1024
    if name == "sets_and_objects":
        assert stored.input_context["tags"] == ["a", "b"]


def test_caps_are_configurable_and_marked() -> None:
    small = Limits(max_field_bytes=200, max_string_chars=50, max_items=3)
    out = sanitize({"s": "y" * 500, "items": list(range(10))}, small)
    assert "truncated" in out["s"] and len(out["s"]) < 120
    assert out["items"][-1] == {"__truncated__": "7 more items"}
    big = sanitize({"k": ["z" * 40] * 3, "j": ["w" * 40] * 3}, small)
    assert set(big) == {"__truncated__", "preview"}


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVE_FAILURES_MAX_FIELD_BYTES", "1000")
    assert Limits.from_env().max_field_bytes == 1000
