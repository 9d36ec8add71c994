"""Strict YAML for edgeci's own files (edgeci.yaml, the trust policy): plain data and the line of every key path;
duplicate keys, non-scalar keys, recursive aliases and alias bombs are ConfigErrors with file:line."""

from __future__ import annotations

from typing import Any

from edgeci.errors import ConfigError

MAX_YAML_VALUES = 20_000  # an edgeci.yaml is a few hundred values; aliases may not expand it beyond this


def load_strict(text: str, source: str, *, aliases: bool = True,
                what: str = "the file") -> tuple[Any, dict[tuple[str, ...], int]]:
    """The document as plain data and the line of every key path, strictly: duplicate keys, non-scalar keys, a
    recursive alias, or aliases that expand beyond MAX_YAML_VALUES values are ConfigErrors with file:line.
    With aliases=False any anchor or alias is refused (`what` names the document in that message)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if not aliases and (isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None)):
                raise ConfigError(f"YAML anchors and aliases are not allowed in {what}",
                                  where=f"{source}:{event.start_mark.line + 1}", fix="write every value out in full")
            return super().compose_node(parent, index)

    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", where=where,
                          fix="fix the syntax (indentation, quoting)") from None
    lines: dict[tuple[str, ...], int] = {}
    count = 0

    def at(node: Any) -> str:
        return f"{source}:{node.start_mark.line + 1}"

    def scalar(node: Any) -> Any:
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML value: {getattr(e, 'problem', None) or e}", where=at(node)) from None

    def build(node: Any, path: tuple[str, ...], open_: frozenset[int]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"the file expands to more than {MAX_YAML_VALUES} values through aliases",
                              where=at(node), fix="write the values out instead of nesting aliases")
        inner = open_ | {id(node)}

        def child(value: Any, child_path: tuple[str, ...], shown: Any) -> Any:
            if id(value) in inner:  # `shown` is the key (or the parent) that refers back to an enclosing anchor
                raise ConfigError("recursive alias: a value contains itself", where=at(shown),
                                  fix="remove the alias that refers to its own anchor")
            return build(value, child_path, inner)

        if isinstance(node, yaml.SequenceNode):
            out_list = []
            for i, v in enumerate(node.value):
                lines.setdefault((*path, str(i)), v.start_mark.line + 1)
                out_list.append(child(v, (*path, str(i)), node))
            return out_list
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            first: dict[str, int] = {}
            merged: list[Any] = []
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    merged.extend(v.value if isinstance(v, yaml.SequenceNode) else [v])
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    raise ConfigError("a key must be a plain value, not a list or mapping", where=at(k))
                key = scalar(k)
                key = "" if key is None else str(key)
                if key in first:
                    raise ConfigError(f"duplicate key '{key}' (first on line {first[key]})",
                                      where=f"{at(k)}: {'.'.join((*path, key))}", fix="keep one of them")
                first[key] = k.start_mark.line + 1
                lines.setdefault((*path, key), k.start_mark.line + 1)
                out[key] = child(v, (*path, key), k)
            for m in merged:
                value = child(m, path, node)
                if not isinstance(value, dict):
                    raise ConfigError("'<<' merges a mapping only", where=at(m))
                for key, item in value.items():
                    out.setdefault(key, item)
            return out
        return scalar(node)

    try:
        data = build(root, (), frozenset()) if root is not None else None
    finally:
        loader.dispose()
    return data, lines
