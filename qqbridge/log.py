"""Logging: structlog, JSON for services or readable lines on a terminal.

    structlog loggers ──▶ level, repeats ──────────────────┐
    stdlib loggers (aiohttp, asyncio, ...) ──▶ repeats ──▶ ProcessorFormatter ─┤
                                                                               ▼
                          timestamp, masking, exception as one field, clip ──▶ one line

Secrets never reach a log line: any key that names one is masked by `_mask_secrets`,
whatever module logged it, and a bearer token or `access_token=` inside a message or a
traceback is masked too. Tracebacks, aiohttp's and asyncio's included, become one
`exception` field, so JSON mode keeps one object per line.

A storm of the same warning or error (a flood of failed accepts, of wrong tokens)
cannot fill the disk: `RepeatLimiter` lets the first through, drops the repeats for
`REPEAT_WINDOW` seconds, and the first one after the window carries `repeated=N`, the
number dropped. "The same" is the event text (its first line, numbers and addresses
ignored), the logger and the level. Debug and info lines are never dropped.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

_SECRET_KEYS = ("token", "password", "passwd", "md5", "secret", "authorization")
_SECRET_TEXT = re.compile(r"(?i)(bearer\s+|access_token=|hs_token[=:]\s*|as_token[=:]\s*)[^\s&\"',;]+")
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")
REPEAT_WINDOW = 60.0
MAX_EVENT_CHARS = 2000
MAX_EXCEPTION_CHARS = 8000
_OURS = "_qqbridge_handler"


class RepeatLimiter:
    """Per kind of line: the first passes; repeats within `window` seconds are counted
    and dropped; the first after the window passes with the count. Thread-safe (stdlib
    logging may be called from threads); remembers at most `max_kinds` kinds."""

    def __init__(
        self, window: float = REPEAT_WINDOW, *, max_kinds: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window, self.max_kinds, self._clock = window, max_kinds, clock
        self._kinds: dict[Hashable, list[float]] = {}  # kind → [window start, dropped]
        self._lock = threading.Lock()

    def admit(self, kind: Hashable) -> int | None:
        """None: drop this line. Otherwise log it; the int is how many were dropped
        since the last one of this kind was logged."""
        with self._lock:
            now = self._clock()
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return None
            dropped = int(seen[1]) if seen is not None else 0
            self._kinds.pop(kind, None)
            self._kinds[kind] = [now, 0]
            if len(self._kinds) > self.max_kinds:
                del self._kinds[next(iter(self._kinds))]  # the longest-quiet kind
            return dropped


def kind_of(text: object) -> str:
    """What makes two lines "the same": the first line, without numbers and addresses."""
    first = str(text).split("\n", 1)[0][:200]
    return _VARYING.sub("#", first)


def _mask_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
    return event


def _scrub_and_clip(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, limit, keep_end in (("event", MAX_EVENT_CHARS, False), ("exception", MAX_EXCEPTION_CHARS, True)):
        value = event.get(key)
        if isinstance(value, str):
            value = _SECRET_TEXT.sub(r"\1***", value)
            if len(value) > limit:  # a traceback says most at its end
                value = "…" + value[-limit:] if keep_end else value[:limit] + "…"
            event[key] = value
    return event


def _limit_repeats(limiter: RepeatLimiter) -> Callable[[Any, str, dict[str, Any]], dict[str, Any]]:
    def limit(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        level = event.get("level", method)
        if level in ("debug", "info"):
            return event
        dropped = limiter.admit(("structlog", level, kind_of(event.get("event", ""))))
        if dropped is None:
            raise structlog.DropEvent
        if dropped:
            event["repeated"] = dropped
        return event

    return limit


class _RepeatFilter(logging.Filter):
    def __init__(self, limiter: RepeatLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        dropped = self._limiter.admit((record.name, record.levelno, kind_of(record.msg)))
        if dropped is None:
            return False
        if dropped:
            record.repeated = dropped
        return True


def configure(format: str = "console", level: str = "INFO", *, limiter: RepeatLimiter | None = None) -> None:
    limiter = limiter or RepeatLimiter()
    renderer: Any = (
        structlog.processors.JSONRenderer() if format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)

    # stdlib records (aiohttp, asyncio, ...) through the same renderer, one line each
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _OURS, True)
    handler.addFilter(_RepeatFilter(limiter))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=["repeated"]),
                timestamper,
                _mask_secrets,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrub_and_clip,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aiohttp.access", "httpx", "httpcore", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # matrix-nio's crypto logs whole payloads (decrypted events among them) below WARNING:
    # decrypted text is never logged (docs/encryption.md).
    logging.getLogger("nio").setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _limit_repeats(limiter),
            timestamper,
            _mask_secrets,
            structlog.processors.format_exc_info,
            _scrub_and_clip,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
