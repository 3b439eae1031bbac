"""Reading YAML strictly: undecodable bytes and duplicate keys are errors, never silent guesses.

PyYAML keeps the last of two equal keys (``max_steps: 10`` then ``max_steps: 1000`` trains 1000
steps without a word) and a file in the wrong encoding ends in a ``UnicodeDecodeError`` traceback
(exit 1, retried by Kubernetes). Both are bad input: exit 2 with the file, line and key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInput

__all__ = ["StrictLoader", "load_yaml", "load_yaml_file", "read_text"]


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:  # the keys written here; merged (<<) ones may be overridden
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first}): the last would silently win",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)
# YAML 1.2 floats without a dot (1e-05, 5E3): what Helm's toYaml writes for small numbers, and what a
# person means by 1e26. PyYAML's 1.1 rules read them as strings.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_text(path: Path) -> str:
    """The file's text as UTF-8; ``BadInput`` naming the byte offset when it is not."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BadInput(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}) cannot "
                       "be decoded; save the file as UTF-8", uri=str(path)) from None


def load_yaml(text: str, *, source: str = "<yaml>") -> Any:
    """Parse one YAML document strictly; ``BadInput`` naming ``source`` and the line on any error."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise BadInput(f"not valid YAML: {what}{where}", uri=source) from None
    except yaml.YAMLError as exc:
        raise BadInput(f"not valid YAML: {exc}", uri=source) from None


def load_yaml_file(path: str | Path) -> Any:
    """``load_yaml`` of a UTF-8 file."""
    return load_yaml(read_text(Path(path)), source=str(path))
