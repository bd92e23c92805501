from __future__ import annotations

import traceback

import pytest

from hive_otel_failures.fingerprint import fingerprint, in_app_frames, is_transient, parameterize


def fp(message: str, *, agent: str = "report-agent", node: str = "parse", error_type: str = "builtins.ValueError",
       tb: str | None = None) -> str:
    return fingerprint(agent_id=agent, node_id=node, error_type=error_type, message=message, traceback=tb)


@pytest.mark.parametrize("a, b", [
    ("order 1234 not found", "order 98 not found"),
    ("record 3f2a9c1e-7b4d-4e8a-9c1d-2b3a4c5d6e7f missing", "record 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d missing"),
    ("bad hash deadbeef1234cafe", "bad hash 0123456789abcdef99"),
    ("cannot fetch https://api.example.com/v1/items?id=3", "cannot fetch https://api.example.com/v1/items?id=77"),
    ("no such file /tmp/run_1/out.json", "no such file /var/data/other.json"),
    ("mail to bob@example.com bounced", "mail to alice@corp.example.org bounced"),
    ("could not parse topic 'ACME report'", "could not parse topic 'Globex report'"),
    ("started 2026-11-22T03:04:25Z then failed", "started 2025-01-01 10:00:00.123+02:00 then failed"),
    ("worker session_20261122_030425_ab12cd34 died", "worker session_20261121_101010_ffee0011 died"),
])
def test_messages_differing_only_in_variables_share_a_fingerprint(a: str, b: str) -> None:
    assert parameterize(a) == parameterize(b)
    assert fp(a) == fp(b)


def test_different_node_agent_error_type_or_message_do_not_group() -> None:
    base = fp("order 12 not found")
    assert fp("order 12 not found", node="render") != base
    assert fp("order 12 not found", agent="other-agent") != base
    assert fp("order 12 not found", error_type="builtins.KeyError") != base
    assert fp("customer 12 not found") != base


def _traceback_of(fn) -> str:
    try:
        fn()
    except Exception:  # noqa: BLE001
        return traceback.format_exc()
    raise AssertionError("did not raise")


def _parse_a():
    raise ValueError("bad 1")


def _parse_b():
    raise ValueError("bad 2")


def test_in_app_frames_are_module_function_without_lines_and_split_groups() -> None:
    tb_a, tb_b = _traceback_of(_parse_a), _traceback_of(_parse_b)
    frames = in_app_frames(tb_a)
    assert frames[-1].endswith("test_fingerprint._parse_a")
    assert not any(ch.isdigit() for ch in frames[-1].split(".")[-1])
    assert fp("bad 1", tb=tb_a) == fp("bad 7", tb=tb_a.replace("line ", "line 1"))  # line numbers ignored
    assert fp("bad 1", tb=tb_a) != fp("bad 2", tb=tb_b)  # same message shape, different code path


def test_library_frames_are_not_in_app() -> None:
    tb = 'Traceback:\n  File "/usr/lib/python3.11/site-packages/litellm/main.py", line 10, in completion\n'
    assert in_app_frames(tb) == []


def test_fingerprint_is_versioned() -> None:
    assert fp("x").startswith("v1:")


@pytest.mark.parametrize("error_type, message", [
    ("litellm.RateLimitError", "Rate limit reached for requests"),
    ("openai.APIConnectionError", "Connection error."),
    ("builtins.TimeoutError", ""),
    ("asyncio.exceptions.TimeoutError", "timed out after 30s"),
    ("builtins.ConnectionRefusedError", "upstream refused"),
    ("anthropic.InternalServerError", "Error code: 529 - overloaded_error"),
    ("httpx.HTTPStatusError", "Server error '503 Service Unavailable' for url"),
    ("builtins.RuntimeError", "HTTP 429 Too Many Requests"),
])
def test_transient_failures(error_type: str, message: str) -> None:
    assert is_transient(error_type, message)


@pytest.mark.parametrize("error_type, message", [
    ("builtins.ValueError", "could not parse topic 'ACME'"),
    ("builtins.KeyError", "'customer'"),
    ("hive.doom_loop", "same tool call 3 turns running"),
    ("pydantic.ValidationError", "1 validation error for Report"),
])
def test_systematic_failures(error_type: str, message: str) -> None:
    assert not is_transient(error_type, message)
