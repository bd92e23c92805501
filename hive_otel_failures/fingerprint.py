"""Grouping key for failures, and the transient-vs-systematic call.

The same failure in another session must land in the same group, so messages are
parameterised (ids, numbers, paths, quoted values ... become placeholders) and stack frames
are reduced to in-app ``module.function`` (no line numbers, no library frames). The key is
versioned: changing these rules means a new ``FINGERPRINT_VERSION``, never silent regrouping.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from pathlib import PurePath

FINGERPRINT_VERSION = 1

# Order matters: the specific shapes go before the ones they contain (numbers last).
_PARAMS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<ts>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<email>"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>)]+", re.IGNORECASE), "<url>"),
    (re.compile(r"(?<![\w.])(?:[A-Za-z]:\\|~?/)[^\s'\":]+"), "<path>"),
    (re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`"), "<str>"),
    (re.compile(r"\b(?:0x)?(?=[0-9a-fA-F_]*\d)(?=[0-9a-fA-F_]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\b[A-Za-z]+_(?=[A-Za-z0-9]*\d)[A-Za-z0-9_]{6,}\b"), "<id>"),  # session_20250101_..., tu_42
    (re.compile(r"(?<![A-Za-z])[-+]?\d+(?:[.,]\d+)*"), "<num>"),
]

_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+, in (?P<func>[^\s]+)', re.MULTILINE)

_TRANSIENT_TYPES = re.compile(
    r"timeout|timedout|ratelimit|rate_limit|toomanyrequests|connection(error|refused|reset|aborted)?|"
    r"serviceunavailable|internalservererror|badgateway|gatewaytimeout|overloaded|apiconnection|"
    r"temporar|brokenpipe|hive\.stream_inactive",
    re.IGNORECASE,
)
_TRANSIENT_TEXT = re.compile(
    r"rate[ _-]?limit|too many requests|\b429\b|\b50[0234]\b|timed? ?out|time-out|overloaded|"
    r"temporarily unavailable|service unavailable|connection (refused|reset|aborted|error)|"
    r"try again later|server error|econnreset|econnrefused",
    re.IGNORECASE,
)


def parameterize(message: str) -> str:
    """The message with its variable parts replaced by placeholders."""
    for pattern, placeholder in _PARAMS:
        message = pattern.sub(placeholder, message)
    return " ".join(message.split())


@functools.lru_cache(maxsize=1024)
def _module_of(path: str) -> str | None:
    """``pkg.module`` for an in-app source file, or None for stdlib/site-packages frames."""
    p = PurePath(path)
    if any(part in ("site-packages", "dist-packages") for part in p.parts) or path.startswith("<"):
        return None
    for stdlib in {sys.base_prefix, sys.prefix}:
        if path.startswith(str(PurePath(stdlib) / "lib")):
            return None
    roots = sorted((r for r in sys.path if r and path.startswith(r.rstrip("/\\") + "/")), key=len, reverse=True)
    rel = PurePath(path[len(roots[0].rstrip("/\\")) + 1 :]) if roots else PurePath(p.name)
    return ".".join(rel.with_suffix("").parts)


def in_app_frames(traceback_text: str | None) -> list[str]:
    """``module.function`` for each in-app frame of a formatted traceback, outermost first."""
    if not traceback_text:
        return []
    frames = []
    for match in _FRAME.finditer(traceback_text):
        module = _module_of(match["path"])
        if module is not None:
            frames.append(f"{module}.{match['func']}")
    return frames


def fingerprint(
    *,
    agent_id: str | None,
    node_id: str | None,
    error_type: str,
    message: str,
    traceback: str | None = None,
) -> str:
    """Stable grouping key: ``v<version>:<16 hex>``."""
    parts = [
        str(FINGERPRINT_VERSION),
        agent_id or "",
        node_id or "",
        error_type,
        parameterize(message),
        *in_app_frames(traceback),
    ]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:16]
    return f"v{FINGERPRINT_VERSION}:{digest}"


def with_version(fingerprint: str) -> str:
    """A fingerprint (or prefix) as stored: given without its ``v1:``, the current version's is added."""
    return fingerprint if ":" in fingerprint else f"v{FINGERPRINT_VERSION}:{fingerprint}"


def is_transient(error_type: str, message: str) -> bool:
    """True for failures a retry may fix (rate limits, timeouts, connection errors, 5xx)."""
    return bool(_TRANSIENT_TYPES.search(error_type or "") or _TRANSIENT_TEXT.search(message or ""))
