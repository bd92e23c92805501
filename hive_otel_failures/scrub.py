"""Make arbitrary Python values safe to keep: secrets redacted, sizes capped, always JSON.

Failures carry whatever the agent held at the time (context, memory, tool arguments). None of
it may raise while being recorded, and no credential may reach the index or a trace backend.

Secrets are found three ways, as well-kept scrubbers do:

* by key, in structured data and in text that holds key-value pairs (JSON, Python reprs,
  ``key=value`` and query strings, headers). One classifier decides for both, so a dict and
  its repr are scrubbed alike. Its vocabulary follows Sentry's ``DEFAULT_DENYLIST`` / Relay's
  ``@password`` rule and detect-secrets' keyword plugin, but matches whole words rather than
  substrings: ``token`` is a secret, ``max_tokens`` is a count.
* by value shape (vendor key prefixes, bearer/basic credentials, JWTs, PEM private keys, URL
  userinfo, Luhn-valid card numbers as Relay's ``@creditcard``), wherever the value appears.
* by entropy (detect-secrets' high-entropy strings), but only under secret-ish names such as
  ``key`` or ``signature``: on its own, entropy cannot tell a trace id from a credential.

IDs are never redacted: a key whose last word is ``id``/``ids``/``uuid`` keeps its value.
Text is capped *before* it is scanned, so a 10 MB field costs what its first 16 KB cost.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import semconv

REDACTED = "[REDACTED]"
TRUNCATED_KEY = "__truncated__"


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


# --- what a key says about its value --------------------------------------------------------

_PLAIN, _SECRETISH, _SECRET, _ID = 0, 1, 2, 3

_KEY_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")  # snake, kebab, camel, SCREAMING
# A word containing one of these stems names a secret (dbpassword, clientSecret, set-cookie).
_SECRET_STEMS = ("password", "passwd", "passphrase", "passcode", "secret", "credential", "cookie", "authorization",
                 "authorisation", "apikey", "privatekey", "privkey", "accesskey", "secretkey", "sessionkey", "csrf",
                 "xsrf", "pwd")
_NOT_SECRET_WORDS = frozenset({"secretary", "secretaries"})
# Whole words that name a secret on their own.
_SECRET_WORDS = frozenset({"creds", "otp", "totp", "cvv", "cvc", "cvv2", "keypass", "bearer"})
_SECRET_LAST_WORDS = frozenset({"pass", "pin"})  # db_pass, user_pin; but pass_rate, pin_code are not
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "priv", "app", "application", "auth", "client", "service", "account",
    "db", "database", "encryption", "signing", "master", "ssh", "license", "consumer", "webhook", "shared",
    "hmac", "session", "subscription", "aes", "rsa", "gpg", "pgp", "jwt", "root", "admin", "deploy", "storage",
})
_TOKEN_QUALIFIERS = frozenset({
    "access", "refresh", "api", "auth", "bearer", "oauth", "session", "id", "csrf", "xsrf", "github", "gitlab",
    "slack", "personal", "secret", "jwt", "bot", "user", "app", "service", "deploy", "registration",
})
# With one of these, "token(s)" counts LLM tokens: max_tokens, tokens_used, input_tokens.
_COUNT_WORDS = frozenset({
    "max", "min", "num", "n", "count", "counts", "used", "input", "output", "total", "prompt", "completion",
    "completions", "limit", "limits", "budget", "remaining", "cached", "cache", "reasoning", "per", "estimated",
    "usage", "length", "len", "size", "left", "consumed", "generated", "context", "thinking", "read", "creation",
    "audio", "text", "image", "accepted", "rejected", "predicted", "spent", "allowed", "avg", "average", "window",
    "rate", "new", "overflow", "threshold", "target",
})
_AUTH_HEADS = frozenset({"header", "headers", "string", "code", "value", "data", "info", "cookie"})
_SECRETISH_WORDS = frozenset({"key", "keys", "tokens", "signature", "sig", "salt", "nonce", "hmac", "dsn", "seed",
                              "auth", "oauth"})
_ID_LAST_WORDS = frozenset({"id", "ids", "uuid", "uuids", "guid", "guids"})
_COOKIE_STEM = "cookie"


@functools.lru_cache(maxsize=8192)
def _key_class(key: str) -> int:
    """Secret, secret-ish (redact if random-looking), an id (never touch) or plain."""
    words = [w.lower() for w in _KEY_WORD.findall(key)]
    if not words:
        return _PLAIN
    if words[-1] in _ID_LAST_WORDS:
        return _ID
    wordset = set(words)
    for word in words:
        if word not in _NOT_SECRET_WORDS and any(stem in word for stem in _SECRET_STEMS):
            return _SECRET
    if wordset & _SECRET_WORDS or words[-1] in _SECRET_LAST_WORDS:
        return _SECRET
    if "card" in wordset and wordset & {"number", "num", "no"}:
        return _SECRET
    if "auth" in wordset and (len(words) == 1 or words[-1] in _AUTH_HEADS):
        return _SECRET
    counting = bool(wordset & _COUNT_WORDS)
    if any(w.endswith("token") for w in words) and not counting:
        return _SECRET  # token, access_token, csrftoken, X-Auth-Token
    if "tokens" in wordset and not counting and wordset & _TOKEN_QUALIFIERS:
        return _SECRET
    if wordset & {"key", "keys"} and wordset & _KEY_QUALIFIERS:
        return _SECRET  # api_key, secret_key, AWS_SECRET_ACCESS_KEY, X-Api-Key
    if wordset & _SECRETISH_WORDS and not (counting and "tokens" in wordset):
        return _SECRETISH
    return _PLAIN


def _entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


_HEX = frozenset("0123456789abcdefABCDEF")


def _looks_random(text: str, min_len: int = 16) -> bool:
    """A single run of mixed characters with the entropy of a key (detect-secrets' idea, tuned for short values)."""
    if not min_len <= len(text) <= 4096 or any(c.isspace() for c in text):
        return False
    has_digit = any(c.isdigit() for c in text)
    has_alpha = any(c.isalpha() for c in text)
    if not (has_digit and has_alpha):
        return False
    if all(c in _HEX for c in text):
        return _entropy(text) >= 3.0
    return _entropy(text) >= 3.5


def _looks_random_key(key: str) -> bool:
    # A dict key holding a credential: upper, lower and digits mixed. Hex, uuids and slugs stay.
    return (len(key) >= 20 and any(c.isupper() for c in key) and any(c.islower() for c in key)
            and _looks_random(key, 20))


# --- secrets in text --------------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----.*?(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|\Z)", re.DOTALL
)
# Value shapes, each behind the lower-case substrings it cannot match without: one alternation
# of them all costs ~2.5 ms per 16 KB, the substring checks a few microseconds.
_SHAPE_SOURCES = (
    (("sk-", "pk-", "rk-"), r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style keys
    (("sk_", "rk_", "whsec_"), r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})"),  # Stripe
    (("bearer",), r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"),
    (("basic",), r"\bBasic\s+[A-Za-z0-9+/=]{12,}"),
    (("akia", "asia"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    (("eyj",), r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),  # JWT
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
     r"\b(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{20,}|github_pat_[A-Za-z0-9_]{22,})"),  # GitHub
    (("glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-"),
     r"\bgl(?:pat|dt|rt|ptt|ft|soat)-[A-Za-z0-9_-]{20,}"),  # GitLab
    (("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    (("hooks.slack.com",), r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/-]{10,}"),
    (("aiza",), r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API key
    (("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    (("npm_",), r"\bnpm_[A-Za-z0-9]{36}"),
    (("pypi-",), r"\bpypi-AgE[A-Za-z0-9_-]{50,}"),
    (("sg.",), r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),  # SendGrid
)
_SHAPES = tuple((hints, re.compile(pattern)) for hints, pattern in _SHAPE_SOURCES)
_USERINFO = re.compile(r"//(?P<ui>[^\s/?#'\"<>\\]{1,512})@(?=[\w\[])")
_CARD = re.compile(
    r"(?<![\w.-])(?:\d{13,19}|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{4}(?P<a>[ -])\d{6}(?P=a)\d{5})(?![\w-]|\.\d)"
)
_HAS_CARD = re.compile(r"\d{4}")
# `key<sep>` where a value may follow: "key": / 'key': / key= / key: / ["key"] = / \"key\":
_PAIR_KEY = re.compile(
    r"""(?<![\w.\-\\])(?:(?P<q>\\{0,4}["'])(?P<qkey>[A-Za-z_][\w.\- ]{0,79}?)(?P=q)|(?P<key>[A-Za-z_][\w.\-]{0,79}))"""
    r"""\]?[ \t]*(?::=|==|=>|[:=])[ \t]*"""
)
_QUOTED = {'"': re.compile(r'"(?:[^"\\\r\n]|\\.)*"?'), "'": re.compile(r"'(?:[^'\\\r\n]|\\.)*'?")}
_RAW_VALUE = re.compile(
    r"(?:(?i:bearer|basic|token|digest|bot|apikey|api-key|key|oauth|jwt|negotiate|hmac|ssws|sso-key"
    r"|aws4-hmac-sha256)[ \t]+)?[^\s,;&'\"<>(){}\[\]\\]+"
)
_LINE_VALUE = re.compile(r"[^\r\n'\"]+")
_KEPT_VALUES = frozenset({"", "none", "null", "nil", "true", "false", "undefined", REDACTED.lower()})
_SHORTEST_SECRET = 4


_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CONTAINER_SCAN = 2048


def _container_end(text: str, pos: int) -> int:
    """Where the bracketed value opening at ``pos`` ends (quotes respected), or a bounded guess."""
    stack: list[str] = []
    quote = ""
    i = pos
    stop = min(len(text), pos + _CONTAINER_SCAN)
    while i < stop:
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in _OPENERS:
            stack.append(_OPENERS[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        elif ch in ")]}":
            break  # unbalanced: stop here
        i += 1
    return i


def _pair_value(text: str, pos: int, key: str) -> tuple[int, int] | None:
    """The span of the value's content after ``key<sep>`` at ``pos`` (quotes excluded)."""
    if pos >= len(text):
        return None
    if text[pos] in _OPENERS:
        return pos, _container_end(text, pos)
    if text[pos] in "bBrRuU" and text[pos + 1:pos + 2] in ("'", '"'):
        pos += 1  # b'...' in a repr
    slashes = 0
    while text[pos + slashes:pos + slashes + 1] == "\\" and slashes < 4:
        slashes += 1
    quote = text[pos + slashes:pos + slashes + 1]
    if quote in ("'", '"'):
        if slashes:  # escaped JSON inside a string: ends at the same escape
            close = text.find("\\" * slashes + quote, pos + slashes + 1)
            eol = text.find("\n", pos)
            end = close if close != -1 and (eol == -1 or close < eol) else (eol if eol != -1 else len(text))
            return pos + slashes + 1, end
        m = _QUOTED[quote].match(text, pos)
        end = m.end() - 1 if m.end() - pos > 1 and text[m.end() - 1] == quote else m.end()
        return pos + 1, end
    m = (_LINE_VALUE if _COOKIE_STEM in key.lower() else _RAW_VALUE).match(text, pos)
    if not m or not m.group().strip():
        return None
    end = pos + len(m.group().rstrip())
    if text[end:end + 1] == "(":
        return None  # `token = context.attach(...)`: a source line in a traceback, not a secret
    return pos, end


def _redact_pairs(text: str) -> str:
    parts: list[str] = []
    last = 0
    for m in _PAIR_KEY.finditer(text):
        if m.start() < last:
            continue  # inside a value already redacted
        key = m.group("key") or m.group("qkey")
        kind = _key_class(key)
        if kind in (_PLAIN, _ID):
            continue
        span = _pair_value(text, m.end(), key)
        if span is None:
            continue
        start, end = span
        value = text[start:end]
        if value.lower() in _KEPT_VALUES or value.startswith(REDACTED):
            continue
        if kind == _SECRETISH and not _looks_random(value.strip("\\")):
            continue
        parts.append(text[last:start])
        parts.append(REDACTED)
        last = end
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group())
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits):
        return REDACTED
    return m.group()


def _userinfo(m: re.Match[str]) -> str:
    info = m.group("ui")
    if info == REDACTED or (":" not in info and len(info) < 16):
        return m.group()  # git@host keeps its user; user:password@ and token@ go
    return f"//{REDACTED}@"


def redact_text(text: str) -> str:
    """Replace secrets in text: values under secret keys, known key shapes, card numbers.

    Scans all of ``text``: callers cap it first (see :func:`safe_text`).
    """
    if len(text) < _SHORTEST_SECRET:
        return text
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    if ":" in text or "=" in text:
        text = _redact_pairs(text)
    lowered = text.lower()
    for hints, pattern in _SHAPES:
        if any(h in lowered for h in hints):
            text = pattern.sub(REDACTED, text)
    if "@" in text and "//" in text:
        text = _USERINFO.sub(_userinfo, text)
    if _HAS_CARD.search(text):
        text = _CARD.sub(_card, text)
    return text


def encodable(text: str) -> str:
    """``text`` as every store and encoder takes it: lone surrogates (from undecodable bytes, which
    SQLite and protobuf refuse) become ``?``, NUL characters (where SQLite's text ends) U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


_CAP_MARKER = re.compile(r"…\[truncated \d+ of \d+ chars\]\Z")
# Scanned past the cap, so that a secret the cut would halve is still recognised whole.
_LOOKAHEAD = 1024


def _marker_start(text: str) -> int | None:
    if not text.endswith(" chars]"):
        return None
    m = _CAP_MARKER.search(text, max(0, len(text) - 64))
    return m.start() if m else None


def cap_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = _marker_start(text)
    if marker is not None and marker <= limit:  # already capped: capping is idempotent
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} of {len(text)} chars]"


def _scrub_capped(text: str, limit: int) -> str:
    """Cap, then redact what is kept: the cost follows the cap, not the input."""
    n = len(text)
    if n <= limit:
        return cap_text(redact_text(encodable(text)), limit)
    marker = _marker_start(text)
    if marker is not None and marker <= limit:  # capped before: scrub the kept head again
        return redact_text(encodable(text[:marker])) + text[marker:]
    window = encodable(text[: limit + _LOOKAHEAD])
    head = redact_text(window)
    # Drop what the lookahead added (redactions only shorten or swap spans, the tail is intact).
    head = head[: max(0, len(head) - (len(window) - limit))]
    return f"{head}…[truncated {n - limit} of {n} chars]"


def _type_name(value: Any) -> str:
    try:
        return type(value).__qualname__
    except Exception:  # noqa: BLE001
        return "object"


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
        return str.__str__(text) if isinstance(text, str) else f"<unrepresentable {_type_name(value)}>"
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break recording
        return f"<unrepresentable {_type_name(value)}>"


def safe_text(value: Any, limits: Limits = Limits()) -> str:
    """Any value as a redacted, valid, capped string (messages, tracebacks, feedback).

    Containers are sanitised first (key-aware), then shown as their repr.
    """
    try:
        if isinstance(value, str):
            text = str.__str__(value)
        elif isinstance(value, dict | list | tuple | Mapping):
            text = _safe_repr(sanitize(value, limits))
        else:
            text = _safe_repr(value)
        return _scrub_capped(text, limits.max_string_chars)
    except Exception:  # noqa: BLE001 - never print what could not be scrubbed
        return f"<unscrubbable {_type_name(value)}>"


# --- structured values ------------------------------------------------------------------------


def _redacted(value: Any) -> Any:
    """What is kept of a value under a secret key: only None, booleans and the empty string."""
    try:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and len(value) == 0:
            return ""
    except Exception:  # noqa: BLE001
        pass
    return REDACTED


@functools.lru_cache(maxsize=4096)
def _clean_key(name: str) -> tuple[str, int]:
    name = encodable(name)  # judged as stored (NUL and lone surrogates replaced), so a second pass agrees
    kind = _key_class(name)
    clean = redact_text(name)
    if clean == name and kind != _ID and _looks_random_key(name):
        clean = REDACTED
    return clean, kind


_MAX_KEY_CHARS = 256


class _Sanitizer:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.path: set[int] = set()
        # Past this many characters the result is replaced by a preview anyway: stop scanning.
        self.budget = limits.max_field_bytes

    def walk(self, value: Any, depth: int, kind: int = _PLAIN) -> Any:
        try:
            return self._walk(value, depth, kind)
        except Exception:  # noqa: BLE001 - one hostile value costs its own place, nothing more
            return f"<unrepresentable {_type_name(value)}>"

    def _walk(self, value: Any, depth: int, kind: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            value = float.__float__(value)
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self._text(str.__str__(value), kind)
        if isinstance(value, bytes | bytearray | memoryview):
            size = len(value)
            text = bytes(value[: self.limits.max_string_chars]).decode("utf-8", "replace")
            return self._text(f"<bytes {size}> {text}", kind)
        if self.budget <= 0:
            return "…[over the field cap]"
        if depth >= self.limits.max_depth:
            return "[max depth]"
        marker = id(value)
        if marker in self.path:
            return "[cycle]"
        self.path.add(marker)
        try:
            return self._container(value, depth, kind)
        finally:
            self.path.discard(marker)

    def _text(self, text: str, kind: int) -> str:
        if self.budget <= 0:
            return "…[over the field cap]"
        limit = self.limits.max_string_chars
        if kind == _ID:
            out = encodable(cap_text(text, limit))
        elif kind == _SECRETISH and _looks_random(text):
            out = REDACTED
        else:
            out = _scrub_capped(text, limit)
        self.budget -= len(out)
        return out

    def _key(self, key: Any, taken: dict[str, Any]) -> tuple[str, int]:
        raw = str.__str__(key) if isinstance(key, str) else _safe_repr(key)
        if len(raw) > _MAX_KEY_CHARS:
            name, kind = _scrub_capped(raw, _MAX_KEY_CHARS), _key_class(raw[:_MAX_KEY_CHARS])
        else:
            name, kind = _clean_key(raw)
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}#{n}"
        self.budget -= len(unique)
        return unique, kind

    def _container(self, value: Any, depth: int, kind: int) -> Any:
        max_items = self.limits.max_items
        if isinstance(value, dict | Mapping):
            inherited = _SECRETISH if kind == _SECRETISH else _PLAIN
            out: dict[str, Any] = {}
            for i, (k, v) in enumerate(value.items()):
                if i >= max_items:
                    out[TRUNCATED_KEY] = f"{len(value) - i} more items"
                    break
                try:
                    name, key_kind = self._key(k, out)
                except Exception:  # noqa: BLE001
                    name, key_kind = self._key(f"<unrepresentable key {_type_name(k)}>", out)
                if key_kind == _SECRET:
                    out[name] = _redacted(v)
                else:
                    out[name] = self.walk(v, depth + 1, key_kind if key_kind != _PLAIN else inherited)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            total = len(value)
            if isinstance(value, set | frozenset):
                items = sorted(itertools.islice(value, max_items), key=_safe_repr)
            else:
                items = list(value[:max_items])
            out_list = [self.walk(v, depth + 1, kind) for v in items]
            if total > max_items:
                out_list.append({TRUNCATED_KEY: f"{total - max_items} more items"})
            return out_list
        dumped = _structured(value)
        if dumped is not None:
            return self._walk(dumped, depth, kind)
        return self._text(_safe_repr(value), kind)


def _structured(value: Any) -> Any:
    """A plain view of pydantic models and dataclasses, or None for other objects."""
    try:
        if callable(getattr(type(value), "model_dump", None)):
            return value.model_dump(mode="python")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out = {}
            for f in dataclasses.fields(value):
                try:
                    out[f.name] = getattr(value, f.name, None)
                except Exception:  # noqa: BLE001
                    out[f.name] = f"<unreadable {f.name}>"
            return out
    except Exception:  # noqa: BLE001
        return None
    return None


def sanitize(value: Any, limits: Limits = Limits()) -> Any:
    """A JSON-safe, redacted copy of ``value``, capped to ``limits.max_field_bytes`` as JSON.

    Never raises. A value over the cap becomes ``{"__truncated__": ..., "preview": ...}``; the
    preview is cut from the scrubbed copy, never from the raw value.
    """
    try:
        clean = _Sanitizer(limits).walk(value, 0)
        text = json.dumps(clean, ensure_ascii=False, sort_keys=True)
    except Exception as exc:  # noqa: BLE001 - last resort: a marker, and nothing unscrubbed
        return {TRUNCATED_KEY: f"unserialisable: {type(exc).__name__}"}
    size = len(text.encode("utf-8"))
    if size <= limits.max_field_bytes:
        return clean
    preview = text.encode("utf-8")[: limits.max_field_bytes].decode("utf-8", "ignore")
    return {TRUNCATED_KEY: f"{size} bytes, cut to {limits.max_field_bytes}", "preview": preview}
