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


# --- secrets in text, by key and by shape; counts and ids kept --------------------------------
# Each case below leaked (or, for counts, was wrongly redacted) before the key-aware scrubber.

from hive_otel_failures.scrub import safe_text  # noqa: E402

PLANTED = "hunter2-correct-horse"
KEY = "zq8Rk2LmW0pXv7Tn4YbC9sHd"


def _clean(out: object, *gone: str) -> str:
    text = out if isinstance(out, str) else repr(out)
    for secret in gone:
        assert secret not in text, (secret, text)
    return text


@pytest.mark.parametrize("message", [
    f"login failed for {{'user': 'bob', 'password': '{PLANTED}'}}",
    f'request body {{"api_key": "{KEY}", "user": "bob"}}',
    f"Client(api_key='{KEY}', timeout=5, user='bob')",
    f'escaped json "{{\\"password\\": \\"{PLANTED}\\", \\"user\\": \\"bob\\"}}"',
    f"{{'password': b'{PLANTED}', 'user': 'bob'}}",
    f"config['password'] = '{PLANTED}' for user bob",
])
def test_secret_keys_inside_dict_json_and_repr_text(message: str) -> None:
    out = _clean(safe_text(message), PLANTED, KEY)
    assert "[REDACTED]" in out and "bob" in out


@pytest.mark.parametrize("message", [
    f"401 with header Authorization: Token {KEY}",
    f"headers={{'Authorization': 'Token {KEY}'}}",
    f"proxy-authorization=Token {KEY} retry",
    f"X-Api-Key: {KEY}",
    f"Cookie: theme=dark; sessionid={KEY}; csrftoken={PLANTED}",
])
def test_authorization_and_credential_headers_in_text(message: str) -> None:
    _clean(safe_text(message), KEY, PLANTED)


@pytest.mark.parametrize("key", ["pwd", "passwd", "secret_key", "SECRET_KEY", "mysql_pwd", "db_pass", "client_secret",
                                 "x-api-key", "apiKey", "accessToken", "AWS_SECRET_ACCESS_KEY", "Proxy-Authorization",
                                 "token", "refresh_token", "credentials", "private_key", "cvv"])
def test_values_under_secret_keys_are_redacted_structured_and_in_text(key: str) -> None:
    out = sanitize({key: PLANTED, "nested": [{key: KEY}], "user": "bob"})
    assert out[key] == "[REDACTED]" and out["nested"][0][key] == "[REDACTED]" and out["user"] == "bob"
    _clean(safe_text(f"connect failed {key}={PLANTED}&user=bob"), PLANTED)
    _clean(safe_text(f'{{"{key}": "{PLANTED}", "user": "bob"}}'), PLANTED)


def test_counts_numbers_and_ids_under_non_secret_keys_are_kept() -> None:
    counts = {"max_tokens": 1024, "tokens_used": 512, "input_tokens": 10, "output_tokens": 7, "total_tokens": 17,
              "max_completion_tokens": 256, "token_count": 3, "tokens": 99, "timeout": 30, "temperature": 0.2}
    assert sanitize(counts) == counts
    text = "max_tokens: 1024, tokens_used=512, input_tokens: 10 exceeded; retry with {'max_tokens': 2048}"
    assert safe_text(text) == text
    ids = {"session_id": "session_20261122_030425_ab12cd34", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
           "span_id": "00f067aa0ba902b7", "run_uuid": "123e4567-e89b-12d3-a456-426614174000",
           "tokenId": "tok_8f3Kq2LmW0pXv7Tn4YbC", "request_ids": ["req_0001", "Zx9Kq2LmW0pXv7Tn4YbC8sHd"],
           "fingerprint": "v1:cb58c365b45e8a1f0d9c2b7e6a5f4d3c"}
    assert sanitize(ids) == ids
    prose = ("trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7 in session_20261122_030425_ab12cd34 "
             "run 123e4567-e89b-12d3-a456-426614174000 at 1732245425000 order 4111111111111112")
    assert safe_text(prose) == prose


def test_token_as_a_whole_word_key_is_secret_even_for_numbers() -> None:
    out = sanitize({"token": 123456, "max_tokens": 1024, "auth": {"user": "bob", "pass": PLANTED}})
    assert out == {"token": "[REDACTED]", "max_tokens": 1024, "auth": "[REDACTED]"}


@pytest.mark.parametrize("url", [
    f"https://bob:{PLANTED}@api.example.com/v1",
    f"postgresql://admin:{PLANTED}@db.internal:5432/app",
    f"https://api.example.com/v1/items?page=2&api_key={KEY}&sort=asc",
    f"https://api.example.com/v1/items?access_token={KEY}",
])
def test_urls_with_userinfo_and_query_strings(url: str) -> None:
    out = _clean(safe_text(f"GET {url} failed"), PLANTED, KEY)
    assert "example.com" in out or "db.internal" in out
    _clean(sanitize({"url": url}), PLANTED, KEY)


SHAPES = {
    "github_classic": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_fine_grained": "github_pat_11ABCDEFG0" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X4y5Z6a7B8c9D0e1F",
    "gitlab": "glpat-" + "xY9zA8bC7dE6fG5hI4jK",
    "slack": "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "stripe_live": "sk_live_" + "51H8aBcDeFgHiJkLmNoPqRsTuV",
    "stripe_restricted": "rk_live_" + "51H8aBcDeFgHiJkLmNoPqRsTuV",
    "google": "AIza" + "SyA-1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6",
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_known_key_shapes_are_redacted_anywhere(name: str) -> None:
    secret = SHAPES[name]
    out = _clean(safe_text(f"the tool said: using {secret} now"), secret)
    assert "the tool said" in out and "now" in out
    _clean(sanitize({"notes": [f"x {secret} y"], "memo": secret}), secret)


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                  "5500 0000 0000 0004", "378282246310005", "6011111111111117"])
def test_luhn_valid_card_numbers_are_redacted(card: str) -> None:
    out = _clean(safe_text(f"charge failed for card {card} (expired)"), card, card.replace(" ", "").replace("-", ""))
    assert "(expired)" in out
    _clean(sanitize({"note": f"card {card}"}), card)


def test_luhn_invalid_digit_runs_are_kept() -> None:
    for number in ["4111 1111 1111 1112", "1732245425000", "12345678901234567", "4111111111111112"]:
        text = f"value {number} here"
        assert safe_text(text) == text


def test_secret_used_as_a_dict_key_is_redacted_and_siblings_kept() -> None:
    data = {SHAPES["github_classic"]: "prod", SHAPES["stripe_live"]: "billing", f"password={PLANTED}": 1,
            "user": "bob"}
    out = sanitize(data)
    _clean(out, SHAPES["github_classic"], SHAPES["stripe_live"], PLANTED)
    assert out["user"] == "bob" and len(out) == 4  # redacted keys stay distinct: no entry is lost
    assert sorted(v for v in out.values() if v in ("prod", "billing")) == ["billing", "prod"]


def test_high_entropy_values_under_secretish_names() -> None:
    out = sanitize({"key": KEY, "signature": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "salt": "q7Xv2LmW9pRt4YbN8sKd", "nonce": "n-8fK2qLm0Px7", "node": "summarize",
                    "lookup_key": "customer_profile", "sort_key": "created_at"})
    assert out["key"] == out["signature"] == out["salt"] == "[REDACTED]"
    assert out["lookup_key"] == "customer_profile" and out["sort_key"] == "created_at" and out["node"] == "summarize"
    _clean(safe_text(f"signing with key={KEY} failed"), KEY)
    assert safe_text("cache key=customer_profile missed") == "cache key=customer_profile missed"


class Hostile:
    """A value whose dunders raise: comparing, hashing or printing it must not unmask its neighbours."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq exploded")

    def __hash__(self) -> int:
        raise RuntimeError("hash exploded")

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")

    __str__ = __repr__


class HostileKey(str):
    """Hashes once (to enter the dict), then raises: as a key a scrubber might cache or compare."""

    hashed = False

    def __hash__(self) -> int:
        if self.hashed:
            raise RuntimeError("hash exploded")
        self.hashed = True
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq exploded")


def test_a_raising_value_never_unmasks_sibling_secrets() -> None:
    snapshot = {"password": Hostile(), "api_key": KEY, "token": PLANTED, "user": "bob",
                "nested": {"secret": Hostile(), "pwd": PLANTED}, "items": [Hostile(), {"passwd": PLANTED}],
                "odd": Hostile(), HostileKey("client_secret"): PLANTED, "tags": {"a", "b"}}
    out = sanitize(snapshot)
    _clean(out, KEY, PLANTED)
    _clean(__import__("json").dumps(out), KEY, PLANTED)
    assert out["user"] == "bob" and out["api_key"] == "[REDACTED]" and out["password"] == "[REDACTED]"
    assert out["nested"]["pwd"] == "[REDACTED]" and out["client_secret"] == "[REDACTED]"
    assert "unrepresentable" in out["odd"] and out["tags"] == ["a", "b"]
    _clean(safe_text(snapshot), KEY, PLANTED)


def test_planted_secrets_in_messages_and_snapshots_never_reach_the_index(pipeline) -> None:
    card = "4111 1111 1111 1111"
    with pipeline.tracer.start_as_current_span("node"):
        hof.record_failure(hof.FailureRecord(
            agent_id="a", node_id="n", error_type="E", session_id="session_20261122_030425_ab12cd34",
            error_message=f"bad {{'password': '{PLANTED}'}} Authorization: Token {KEY} card {card} max_tokens: 1024",
            input_context={"pwd": PLANTED, "max_tokens": 1024, "boom": Hostile(), "api_key": SHAPES["gitlab"]},
            memory_snapshot={"note": f"{{\"api_key\": \"{SHAPES['stripe_live']}\"}}"},
        ))
    pipeline.flush()
    raw = db_bytes(pipeline.db_path)
    for secret in (PLANTED, KEY, card, SHAPES["gitlab"], SHAPES["stripe_live"]):
        assert secret.encode() not in raw, secret
    with pipeline.index() as index:
        (stored,) = index.recent()
    assert stored.input_context["max_tokens"] == 1024 and "max_tokens: 1024" in stored.error_message


@pytest.mark.parametrize("value", [
    f"{{'password': '{PLANTED}'}} Authorization: Token {KEY} url https://u:{PLANTED}@h/x?api_key={KEY}",
    {"password": PLANTED, "note": f"key={KEY}", "max_tokens": 5},
    "y" * 20_000 + f" password={PLANTED}",
])
def test_scrubbing_is_idempotent(value: object) -> None:
    once_text = safe_text(value)
    assert safe_text(once_text) == once_text
    once = sanitize(value)
    assert sanitize(once) == once


def test_a_huge_field_is_capped_with_its_marker_and_a_secret_across_the_cut_does_not_leak() -> None:
    limits = Limits(max_string_chars=50)
    secret = SHAPES["github_classic"]
    text = "a" * 40 + " " + secret + " " + "b" * 10_000
    out = safe_text(text, limits)
    assert out.endswith(f"…[truncated {len(text) - 50} of {len(text)} chars]")
    assert "ghp_A1b2" not in out and "A1b2C3" not in out
    big = "x" * (10 * 1024 * 1024) + f" password={PLANTED}"
    assert safe_text(big).endswith(f"of {len(big)} chars]")
    assert sanitize({"blob": big})["blob"].endswith(f"of {len(big)} chars]")


@pytest.mark.parametrize("message", [
    f"requests.get(url, auth=('bob', '{PLANTED}'), timeout=5)",
    f'{{"credentials": ["{PLANTED}", "{KEY}"], "user": "bob"}}',
    f'{{"API Key": "{KEY}", "user": "bob"}}',
    f"{{'credentials': {{'user': 'bob', 'value': '{PLANTED}'}}}}",
])
def test_secret_keys_holding_containers_or_spaced_names_in_text(message: str) -> None:
    out = _clean(safe_text(message), PLANTED, KEY)
    assert "[REDACTED]" in out


def test_words_that_merely_resemble_secret_names_keep_their_values() -> None:
    data = {"authorized_by": "alice", "author": "bob", "secretary": "carol", "pass_rate": 0.93,
            "passed": True, "keyboard": "qwerty", "tokenizer": "cl100k_base", "monkey": "george"}
    assert sanitize(data) == data


def test_source_lines_in_tracebacks_keep_their_calls() -> None:
    line = '  File "agent.py", line 12, in run\n    token = context.attach(trace.set_span_in_context(span))'
    assert safe_text(line) == line


def test_a_long_key_is_cut_without_leaving_part_of_a_secret() -> None:
    key = "x" * 250 + " " + SHAPES["github_classic"]
    out = sanitize({key: 1})
    _clean(out, "ghp_", SHAPES["github_classic"][:8])
