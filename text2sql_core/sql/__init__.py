"""Safe execution of untrusted SQL: a read-only, time- and row-limited SQLite sandbox and its process pool."""

from .sandbox import (
    DEFAULT_ROW_CAP,
    DEFAULT_TIMEOUT_S,
    ErrorKind,
    SandboxPool,
    SQLResult,
    execute,
    resolve_db,
)

__all__ = ["DEFAULT_ROW_CAP", "DEFAULT_TIMEOUT_S", "ErrorKind", "SQLResult", "SandboxPool", "execute",
           "resolve_db"]
