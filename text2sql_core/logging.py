"""Structured logging: JSON lines for machines (pods, CI), a readable console for people.

Every line carries ``run`` and ``stage`` (bound once by the entrypoint through contextvars), so
logs of a whole run can be filtered in the cluster's log store without parsing messages.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["bind_context", "configure_logging", "get_logger"]

_configured = False


def _use_json() -> bool:
    fmt = os.environ.get("T2S_LOG_FORMAT", "").lower()
    if fmt in ("json", "console"):
        return fmt == "json"
    return not sys.stderr.isatty()


def configure_logging(*, level: str | None = None, force: bool = False) -> None:
    """Set up structlog once per process; ``T2S_LOG_FORMAT=json|console`` and ``T2S_LOG_LEVEL`` override."""
    global _configured
    if _configured and not force:
        return
    level_name = (level or os.environ.get("T2S_LOG_LEVEL", "INFO")).upper()
    lvl = getattr(logging, level_name, logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if _use_json()
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # resolve sys.stderr per logger, not once: a replaced stream (pytest capture) is then followed
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries using stdlib logging (transformers, urllib3) go to stderr at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    _configured = True


def bind_context(**values: Any) -> None:
    """Bind keys (run=, stage=) that every later log line of this process carries."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def get_logger(**bind: Any) -> Any:
    configure_logging()
    return structlog.get_logger().bind(**bind)
