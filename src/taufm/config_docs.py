"""The description of every configuration key, rendered as Markdown from the config schema.

``config/README.md`` is this module's output (``taufm config-docs --output config/README.md``): the
schema (``src/taufm/schemas/config.schema.yaml``) stays the one place a key's type, range, default
and meaning are written down, and a test fails when the checked-in file falls behind it.

One table per top-level section lists every key by its dotted path. A ``$ref`` to a definition of
leaf values is inlined; a definition of an object that several keys share (the detector
parameters, the fine-tuning heads, the per-task settings) gets its own table, which the keys
using it point to. A mapping of user-chosen names (``additionalProperties`` with a schema, as
``pretrain.backbones``) is listed with ``<name>`` in its paths.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taufm.config import SCHEMA_PATH, load_schema

REGENERATE_COMMAND = "taufm config-docs --output config/README.md"
MAP_KEY_PLACEHOLDER = "<name>"


@dataclass(frozen=True)
class KeyRow:
    """One line of a table: a key and what the schema says of it."""

    path: str
    type: str
    default: str
    allowed: str
    description: str


def _definition_name(node: Mapping) -> str | None:
    ref = node.get("$ref")
    if ref is None:
        return None
    if not ref.startswith("#/$defs/"):
        raise ValueError(f"config schema: only references into $defs are supported, got {ref!r}")
    return ref.removeprefix("#/$defs/")


def _referenced_definitions(node: Any) -> Iterator[str]:
    """Every $defs name that ``node`` refers to, once per reference."""
    if isinstance(node, Mapping):
        name = _definition_name(node)
        if name is not None:
            yield name
        for value in node.values():
            yield from _referenced_definitions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _referenced_definitions(value)


class _Renderer:
    def __init__(self, schema: Mapping):
        self.schema = schema
        self.definitions: Mapping[str, Mapping] = schema.get("$defs", {})
        uses = Counter(_referenced_definitions(schema.get("properties", {})))
        uses.update(_referenced_definitions(self.definitions))
        # Object definitions used by more than one key get a table of their own.
        self.shared = sorted(name for name, count in uses.items() if count > 1 and self._has_properties(self.definitions[name]))
        self.users: dict[str, list[str]] = {name: [] for name in self.shared}

    @staticmethod
    def _has_properties(node: Mapping) -> bool:
        return bool(node.get("properties")) or isinstance(node.get("additionalProperties"), Mapping)

    def resolve(self, node: Mapping) -> Mapping:
        """``node`` with its $ref replaced by the definition (the node's own keys take precedence)."""
        name = _definition_name(node)
        if name is None:
            return node
        if name not in self.definitions:
            raise ValueError(f"config schema: $ref to a missing definition $defs/{name}")
        return {**self.resolve(self.definitions[name]), **{k: v for k, v in node.items() if k != "$ref"}}

    # ---- the cells of a row ----

    def type_text(self, node: Mapping) -> str:
        node = self.resolve(node)
        if "enum" in node:
            kinds = sorted({_json_type(value) for value in node["enum"]})
            return " or ".join(kinds)
        declared = node.get("type")
        if declared is None:
            return "any"
        kinds = [declared] if isinstance(declared, str) else list(declared)
        if "array" in kinds and "items" in node:
            item = self.type_text(node["items"])
            kinds = [f"array of {item}" if kind == "array" else kind for kind in kinds]
        if "object" in kinds and isinstance(node.get("additionalProperties"), Mapping):
            kinds = [f"mapping of name to {self.type_text(node['additionalProperties'])}" if kind == "object" else kind for kind in kinds]
        return " or ".join(kinds)

    def allowed_text(self, node: Mapping, required: bool) -> str:
        node = self.resolve(node)
        parts = []
        if required:
            parts.append("required")
        if "enum" in node:
            parts.append("one of " + ", ".join(_code(value) for value in node["enum"]))
        parts.extend(_bounds(node))
        if "pattern" in node:
            parts.append(f"matches {_code(node['pattern'])}")
        if "items" in node:
            item = self.resolve(node["items"])
            item_parts = []
            if "enum" in item:
                item_parts.append("one of " + ", ".join(_code(value) for value in item["enum"]))
            item_parts.extend(_bounds(item))
            if "pattern" in item:
                item_parts.append(f"matches {_code(item['pattern'])}")
            if item_parts:
                parts.append("each item " + ", ".join(item_parts))
        if "propertyNames" in node and "pattern" in node["propertyNames"]:
            parts.append(f"names match {_code(node['propertyNames']['pattern'])}")
        return "; ".join(parts)

    @staticmethod
    def default_text(node: Mapping, resolved: Mapping) -> str:
        if "default" in node:
            value = node["default"]
        elif "default" in resolved:
            value = resolved["default"]
        else:
            return ""
        if value == {} and resolved.get("type") == "object":
            return ""  # an empty mapping of settings: each key below has its own default
        return _code(value)

    # ---- walking the schema ----

    def rows(self, node: Mapping, path: str, required: bool = False) -> Iterator[KeyRow]:
        """The row of the key at ``path`` and those of every key below it."""
        shared = _definition_name(node)
        resolved = self.resolve(node)
        description = markdown_prose(node.get("description") or resolved.get("description", ""))
        if shared in self.shared:
            self.users[shared].append(path)
            see = f"Keys: [`{shared}`](#{_anchor(_shared_heading(shared))}) below."
            description = f"{description.rstrip('.')}. {see}" if description else see
        yield KeyRow(
            path=path,
            type=self.type_text(node),
            default=self.default_text(node, resolved),
            allowed=self.allowed_text(node, required),
            description=description,
        )
        if shared in self.shared:
            return
        yield from self.children(resolved, path)

    def children(self, node: Mapping, path: str) -> Iterator[KeyRow]:
        required = set(node.get("required", ()))
        prefix = f"{path}." if path else ""
        for key, child in node.get("properties", {}).items():
            yield from self.rows(child, f"{prefix}{key}", key in required)
        mapped = node.get("additionalProperties")
        if isinstance(mapped, Mapping):
            yield from self.rows(mapped, f"{prefix}{MAP_KEY_PLACEHOLDER}")

    def render(self) -> str:
        lines = [
            "# Configuration",
            "",
            f"<!-- Generated from src/taufm/schemas/config.schema.yaml by `{REGENERATE_COMMAND}`; do not edit. -->",
            "",
            markdown_prose(self.schema.get("description", "")),
            "",
            "`config/config.yaml` holds the default run and `workflow/presets/*.yaml` "
            "override parts of it (`snakemake --configfile workflow/presets/smoke.yaml`). Keys are "
            "written as dotted paths: `finetune.grid.sizes` is `sizes` under `grid` under `finetune`. "
            f"`{MAP_KEY_PLACEHOLDER}` stands for a name of your choice. A key with no default that is "
            "not marked required may be left out; its description says what then applies.",
            "",
        ]
        for key, section in self.schema.get("properties", {}).items():
            rows = list(self.rows(section, key))
            lines += [f"## `{key}`", ""]
            if len(rows) > 1:  # a section of keys: its own description above their table
                if rows[0].description:
                    lines += [rows[0].description, ""]
                rows = rows[1:]
            lines += _table(rows)
            lines.append("")
        if self.shared:
            lines += ["## Settings shared by several keys", ""]
        for name in self.shared:
            definition = self.definitions[name]
            users = ", ".join(f"`{user}`" for user in self.users[name])
            lines += [f"### {_shared_heading(name, code=True)}", "", f"Used by {users}."]
            if definition.get("description"):
                lines += ["", markdown_prose(definition["description"])]
            lines += [""]
            lines += _table(list(self.children(definition, "")))
            lines.append("")
        return "\n".join(lines).rstrip("\n") + "\n"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _bounds(node: Mapping) -> list[str]:
    """The numeric, length and size limits of ``node``, in words."""
    parts = []
    if "minimum" in node and "maximum" in node:
        parts.append(f"{node['minimum']} to {node['maximum']}")
    else:
        bounds = [f"{word} {node[key]}" for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in node]
        if bounds:
            parts.append(", ".join(bounds))
    for low, high, unit in (("minLength", "maxLength", "characters"), ("minItems", "maxItems", "items"), ("minProperties", "maxProperties", "entries")):
        least, most = node.get(low), node.get(high)
        if least is not None and least == most:
            parts.append(f"exactly {least} {unit}")
        elif least == 1 and most is None:
            parts.append("not empty")
        else:
            if least is not None:
                parts.append(f"at least {least} {unit}")
            if most is not None:
                parts.append(f"at most {most} {unit}")
    if node.get("uniqueItems"):
        parts.append("no repeats")
    return parts


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def markdown_prose(text: str) -> str:
    """``text`` as Markdown prose: outside code spans, ``<``, ``>`` and ``*`` are shown as
    written (``results/pretrain/<name>/`` is not an HTML tag, ``*.yaml`` no emphasis)."""
    pieces = _one_line(text).split("`")
    for i in range(0, len(pieces), 2):  # the even pieces lie outside code spans
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(pieces)


def _shared_heading(name: str, code: bool = False) -> str:
    """The heading of a shared definition's table (not the name alone: a section may have it)."""
    return f"`{name}` (shared)" if code else f"{name} (shared)"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading with this text (code-span backticks left out)."""
    return "".join(ch for ch in heading.lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[KeyRow]) -> list[str]:
    lines = ["| Key | Type | Default | Allowed | Description |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = (f"`{row.path}`", row.type, row.default, row.allowed, row.description)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def render_config_docs(schema: Mapping | None = None) -> str:
    """Markdown describing every key of ``schema`` (default: the package's config schema)."""
    return _Renderer(load_schema(SCHEMA_PATH) if schema is None else schema).render()


def undescribed_keys(config: Mapping, schema: Mapping | None = None) -> list[str]:
    """Dotted paths of the keys ``config`` sets whose schema gives no description (their own or
    their definition's); names under a mapping of user-chosen names count as described."""
    renderer = _Renderer(load_schema(SCHEMA_PATH) if schema is None else schema)
    missing: list[str] = []

    def visit(values: Mapping, node: Mapping, path: str) -> None:
        node = renderer.resolve(node)
        properties = node.get("properties", {})
        mapped = node.get("additionalProperties")
        for key, value in values.items():
            child_path = f"{path}.{key}" if path else key
            if key in properties:
                child = properties[key]
                if not (child.get("description") or renderer.resolve(child).get("description")):
                    missing.append(child_path)
            elif isinstance(mapped, Mapping):
                child = mapped
            else:
                continue  # an unknown key: validation reports it
            if isinstance(value, Mapping):
                visit(value, child, child_path)

    visit(config, renderer.schema, "")
    return missing


def write_config_docs(output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_config_docs())
    return output
