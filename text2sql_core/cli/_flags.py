"""Errors name what the user typed: a library's keyword (``row_cap``) becomes the CLI flag (``--row-cap``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..errors import T2SError

__all__ = ["flag_names"]


@contextmanager
def flag_names(flags: Mapping[str, str]) -> Iterator[None]:
    """Rename the ``field`` of a ``T2SError`` raised inside from a keyword to its flag (``{"tables": "--tables"}``).

    Only errors about an argument are renamed: one that names a file (``uri``) is about a field of that
    file's records and keeps the record's field name.
    """
    try:
        yield
    except T2SError as exc:
        if exc.uri is None and exc.field in flags:
            exc.field = flags[exc.field]
        raise
