"""Versioned YAML files the user writes (constitutions, blends): one strict loader and one error type.

Every failure names the file and, where there is one, the field (principles named by id) or the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

MAX_FILE_BYTES = 1024 * 1024
M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A constitution or blend file that cannot be used; the message names the file and the field."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source = source
        self.field = field
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


def parse_yaml_model(raw: bytes | str, source: str, model: type[M], error: type[SpecError]) -> M:
    """Validate a YAML mapping as `model`; every failure raises `error` naming `source` and the field.

    Shared by constitutions and blends: size limit, UTF-8, YAML syntax and duplicate keys (with line and
    column), empty file, top level not a mapping, then pydantic's first error rendered as a field path.
    """
    data_bytes = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data_bytes) > MAX_FILE_BYTES:
        raise error(source, None, f"file is {len(data_bytes)} bytes, over the 1 MiB limit")
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(source, None, f"not UTF-8 text ({e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(source, None, f"YAML syntax error{where}: {problem}") from None
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
    """A spec file's bytes, refusing files over the size limit; an OSError becomes `error` naming the path."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(str(path), None, f"file is {size} bytes, over the 1 MiB limit")
        return path.read_bytes()
    except OSError as e:  # missing, a directory, no permission
        raise error(str(path), None, f"cannot read file ({e.strerror})") from None
