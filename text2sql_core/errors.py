"""Error types, and the exit code each maps to.

The split decides what Kubernetes does with a failed pod: a bad input fails the Job at once
(``podFailurePolicy`` on exit code 2), anything else is retried up to ``backoffLimit``.

    T2SError                  exit 1
    ├── BadInput              exit 2  config, dataset, missing artifact: a retry cannot help
    │   └── ChecksumMismatch  exit 2  a downloaded artifact differs from its manifest
    └── Retryable             exit 1  S3 throttling or outage, API 5xx, a killed worker
"""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_OK", "BadInput", "ChecksumMismatch", "Retryable", "T2SError"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class T2SError(Exception):
    """Base of every error this package raises on purpose.

    Context is keyword-only and ends up in the message and in structured logs.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, stage: str | None = None, uri: str | None = None,
                 record: str | int | None = None, field: str | None = None) -> None:
        self.message = message
        self.stage = stage
        self.uri = uri
        self.record = record
        self.field = field
        super().__init__(self.__str__())

    def context(self) -> dict[str, object]:
        return {k: v for k, v in (("stage", self.stage), ("uri", self.uri), ("record", self.record),
                                  ("field", self.field)) if v is not None}

    def __str__(self) -> str:
        where = []
        if self.uri is not None:
            where.append(str(self.uri))
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field `{self.field}`")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class BadInput(T2SError):
    """Raised when a config, dataset or upstream artifact is wrong; retrying cannot help (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ChecksumMismatch(BadInput):
    """Raised when a downloaded file's size or sha256 differs from what its manifest lists."""


class Retryable(T2SError):
    """Raised for transient failures (storage outage, throttling, API 5xx); the Job's backoff retries (exit 1)."""

    exit_code = EXIT_FAILURE
