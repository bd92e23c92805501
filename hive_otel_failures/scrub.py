"""Make arbitrary Python values safe to keep: secrets redacted, sizes capped, always JSON.

Failures carry whatever the agent held at the time (context, memory, tool arguments). None of
it may raise while being recorded, and no credential may reach the index or a trace backend.
IDs are never touched: a key named ``*_id``/``id`` keeps its value verbatim.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from . import semconv

REDACTED = "[REDACTED]"
TRUNCATED_KEY = "__truncated__"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|apikey|authori[sz]ation|cookie|"
    r"credential|private[-_]?key|access[-_]?key|session[-_]?key|signature|x-api-key",
    re.IGNORECASE,
)
_ID_KEY = re.compile(r"(^|_)(id|ids)$", re.IGNORECASE)

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
_SECRET_VALUE_PATTERNS = [
    r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9_-]{2,}-)*[A-Za-z0-9_-]{16,}",  # OpenAI/Anthropic style keys
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
    r"\bBasic\s+[A-Za-z0-9+/=]{12,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"(?i:aws_secret_access_key)\s*[=:]\s*[A-Za-z0-9/+=]{40}",
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",  # JWT
    r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}",  # GitHub
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
    r"\b(?i:password|passwd|secret|token|api[-_]?key)\s*[=:]\s*[^\s,;&'\"]{4,}",
    r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # user:password@ in URLs
]
# One pass over the text instead of one per pattern.
_ANY_SECRET = re.compile("|".join(f"(?:{p})" for p in _SECRET_VALUE_PATTERNS))


@dataclass(frozen=True)
class Limits:
    """Size caps for stored content; a capped value carries an explicit truncation marker."""

    max_field_bytes: int = 64 * 1024
    max_string_chars: int = 16 * 1024
    max_items: int = 500
    max_depth: int = 16

    @classmethod
    def from_env(cls) -> "Limits":
        raw = os.environ.get(semconv.ENV_MAX_FIELD_BYTES)
        if raw and raw.isdigit() and int(raw) > 0:
            n = int(raw)
            return cls(max_field_bytes=n, max_string_chars=min(cls.max_string_chars, n))
        return cls()


# Every secret pattern contains one of these (lower-cased); most text contains none, and
# substring checks are far cheaper than the regex.
_SECRET_HINTS = ("sk-", "pk-", "rk-", "bearer", "basic ", "akia", "asia", "aws_secret", "eyj", "ghp_", "gho_",
                 "ghu_", "ghs_", "ghr_", "github_pat", "xox", "aiza", "pass", "secret", "token", "api", "://",
                 "private key")
_SHORTEST_SECRET = 8
_HINT = re.compile("|".join(re.escape(h) for h in _SECRET_HINTS), re.IGNORECASE)


def redact_text(text: str) -> str:
    """Replace secret-looking substrings (keys, bearer tokens, JWTs, private keys) in text."""
    if len(text) < _SHORTEST_SECRET:
        return text
    if not _HINT.search(text):
        return text
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    return _ANY_SECRET.sub(REDACTED, text)


def _valid_utf8(text: str) -> str:
    # Lone surrogates (from undecodable bytes) would make SQLite and protobuf raise.
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


_CAP_MARKER = re.compile(r"…\[truncated \d+ of \d+ chars\]$")


def cap_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = _CAP_MARKER.search(text)
    if marker and marker.start() <= limit:  # already capped: capping is idempotent
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} of {len(text)} chars]"


def safe_text(value: Any, limits: Limits = Limits()) -> str:
    """Any value as a redacted, valid, capped string (messages, tracebacks, feedback)."""
    if not isinstance(value, str):
        value = _safe_repr(value)
    return cap_text(redact_text(_valid_utf8(value)), limits.max_string_chars)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break recording
        return f"<unrepresentable {type(value).__qualname__}>"


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _ID_KEY.search(key)


@functools.lru_cache(maxsize=4096)
def _is_id_key(key: str) -> bool:
    return bool(_ID_KEY.search(key))


class _Sanitizer:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.path: set[int] = set()

    def walk(self, value: Any, depth: int, key: str | None = None) -> Any:
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            value = _valid_utf8(value)
            if key is not None and _is_id_key(key):
                return value
            return cap_text(redact_text(value), self.limits.max_string_chars)
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            text = raw[: self.limits.max_string_chars].decode("utf-8", "replace")
            return self.walk(f"<bytes {len(raw)}> {text}", depth)
        if depth >= self.limits.max_depth:
            return "[max depth]"
        marker = id(value)
        if marker in self.path:
            return "[cycle]"
        self.path.add(marker)
        try:
            return self._container(value, depth)
        finally:
            self.path.discard(marker)

    def _container(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= self.limits.max_items:
                    out[TRUNCATED_KEY] = f"{len(value) - i} more items"
                    break
                name = _valid_utf8(k if isinstance(k, str) else _safe_repr(k))
                out[name] = REDACTED if _is_secret_key(name) and v not in (None, "") else self.walk(v, depth + 1, name)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            items = list(value)
            if isinstance(value, set | frozenset):
                items.sort(key=_safe_repr)
            out_list = [self.walk(v, depth + 1) for v in items[: self.limits.max_items]]
            if len(items) > self.limits.max_items:
                out_list.append({TRUNCATED_KEY: f"{len(items) - self.limits.max_items} more items"})
            return out_list
        dumped = _structured(value)
        if dumped is not None:
            return self.walk(dumped, depth)
        return self.walk(_safe_repr(value), depth)


def _structured(value: Any) -> Any:
    """A plain view of pydantic models and dataclasses, or None for other objects."""
    try:
        if hasattr(value, "model_dump") and callable(value.model_dump):
            return value.model_dump(mode="python")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    except Exception:  # noqa: BLE001
        return None
    return None


def sanitize(value: Any, limits: Limits = Limits()) -> Any:
    """A JSON-safe, redacted copy of ``value``, capped to ``limits.max_field_bytes`` as JSON.

    Never raises. A value over the cap becomes ``{"__truncated__": ..., "preview": ...}``.
    """
    try:
        clean = _Sanitizer(limits).walk(value, 0)
        text = json.dumps(clean, ensure_ascii=False, sort_keys=True)
    except Exception as exc:  # noqa: BLE001 - last resort; keep a marker, lose nothing silently
        return {TRUNCATED_KEY: f"unserialisable: {type(exc).__name__}", "preview": safe_text(value, limits)}
    size = len(text.encode("utf-8"))
    if size <= limits.max_field_bytes:
        return clean
    preview = text.encode("utf-8")[: limits.max_field_bytes].decode("utf-8", "ignore")
    return {TRUNCATED_KEY: f"{size} bytes, cut to {limits.max_field_bytes}", "preview": preview}
