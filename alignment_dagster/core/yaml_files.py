"""Versioned YAML files the user writes (constitutions, blends): one strict loader and one error type.

Every failure names the file and, where there is one, the field (principles named by id) or the line. No
input gets past it as anything but a `SpecError`: nesting deeper than `MAX_DEPTH` is refused from the
parser's events before anything recursive runs, and integers beyond Python's digit limit are reported as a
field error, so one such file costs only itself (a sensor tick, a blend lookup, `validate` go on).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from alignment_dagster.core.storage import TooLargeError, read_local_file

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32  # a constitution nests 4 levels; deeper is a mistake or an attack on the recursive parts
M = TypeVar("M", bound=BaseModel)
# What every spec model shares: unknown keys refused; inf/nan refused (they pass `> 0` bounds and then make
# every aggregate nan); strict types, so YAML 1.1's `yes`/`off` (booleans) or "0.5" (text) are refused where
# a number goes instead of becoming 1.0 or 0.5 quietly.
SPEC_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class SpecError(ValueError):
    """A constitution or blend file that cannot be used; the message names the file and the field."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic location, naming principles by id where possible: principles[2](harm).weight."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                pid = node[item].get("id")
                if pid:
                    label += f"({pid})"
            parts.append(label)
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # `<<` merges may override keys by design; only scalar keys written out are checked.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-3` as text, since its floats need a dot; with strict number fields that would
# refuse a weight everyone reads as a number, so exponent floats resolve as YAML 1.2 resolves them.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_depth(text: str) -> str | None:
    """Where the text nests collections deeper than MAX_DEPTH, from the parser's events (the parser keeps
    its own stack; composing and constructing recurse per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                return (
                    f"nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _load_yaml(text: str, source: str, error: type[SpecError]) -> Any:
    try:
        too_deep = _check_depth(text)
        if too_deep:
            raise error(source, None, too_deep)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(source, None, f"YAML syntax error{where}: {problem}") from None
    except ValueError as e:  # int() past Python's digit limit, raised while constructing a scalar
        if isinstance(e, SpecError):
            raise
        raise error(source, None, f"a number is too long ({e})") from None


def parse_yaml_model(raw: bytes | str, source: str, model: type[M], error: type[SpecError]) -> M:
    """Validate a YAML mapping as `model`; every failure raises `error` naming `source` and the field.

    Shared by constitutions and blends: size limit, UTF-8, nesting depth, YAML syntax and duplicate keys
    (with line and column), numbers too long for Python, empty file, top level not a mapping, then
    pydantic's first error rendered as a field path.
    """
    data_bytes = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data_bytes) > MAX_FILE_BYTES:
        raise error(source, None, f"file is {len(data_bytes)} bytes, over the 1 MiB limit")
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(source, None, f"not UTF-8 text ({e})") from None
    data = _load_yaml(text, source, error)
    if data is None:
        raise error(source, None, "file is empty")
    if not isinstance(data, dict):
        raise error(source, None, f"top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = _field_path(tuple(err["loc"]), data) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        more = f" (and {len(e.errors()) - 1} more error(s))" if len(e.errors()) > 1 else ""
        raise error(source, field, msg + more) from None


def read_spec_file(path: str | Path, error: type[SpecError] = SpecError) -> bytes:
    """A spec file's bytes through the bounded reader (regular files only, at most 1 MiB: a FIFO or a device
    is refused without blocking); every failure becomes `error` naming the path."""
    try:
        return read_local_file(path, MAX_FILE_BYTES)
    except TooLargeError as e:
        raise error(str(path), None, str(e)) from None
    except OSError as e:  # missing, a directory, a FIFO, no permission
        raise error(str(path), None, f"cannot read file ({e.strerror})") from None


class SpecVersion(BaseModel):
    """One version of a YAML spec as its asset stores it: the partition key, content hash, file and text, and
    the validated spec (a subclass declares `spec`, aliased by kind). Stored as JSON and read back through
    pydantic by the IO manager, so every consumer gets a validated spec without validating it again."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    partition_key: str
    content_hash: str
    source: str
    yaml: str

    @classmethod
    def of(cls, spec: Any, source: str, raw: bytes) -> Self:
        return cls(
            partition_key=spec.partition_key,
            content_hash=spec.content_hash,
            source=source,
            yaml=raw.decode("utf-8"),
            spec=spec,
        )
