"""Help for the command line: every config field with its meaning (`--print_config`), and typo suggestions.

The meanings are the comments above each field in `kdjax/config/schema.py::base_config`, so they cannot drift from
the schema.
"""

from __future__ import annotations

import difflib
import re

import ml_collections

from kdjax.config import schema


def unknown_field(c: ml_collections.ConfigDict, path: str) -> str | None:
    """For an override path with a missing field: 'unknown config field X', with the closest existing name."""
    node, done = c, list[str]()
    for part in path.split("."):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node, done = node[part], [*done, part]
            continue
        if not isinstance(node, ml_collections.ConfigDict):
            return f"config field {'.'.join(done)} has no sub-fields (--config.{path})"
        where = ".".join(done)
        close = difflib.get_close_matches(part, list(node.keys()), n=1, cutoff=0.6)
        hint = f"; did you mean --config.{where + '.' if where else ''}{close[0]}?" if close else ""
        return f"unknown config field {where + '.' if where else ''}{part} (--config.{path}){hint}"
    return None


def describe(c: ml_collections.ConfigDict) -> list[str]:
    """`--config.<field>=<value>  # <comment from base_config>` for every field, sorted by name."""
    # A comment block describes every assignment right below it (e.g. the four latency_* fields share one).
    comments: dict[str, str] = {}
    block: list[str] = []
    after_comment = False
    with open(schema.__file__) as f:
        for line in f:
            text = line.strip()
            m = re.match(r"c\.([\w.]+) = ", text)
            if text.startswith("#"):
                block = [*block, text.lstrip("# ")] if after_comment else [text.lstrip("# ")]
                after_comment = True
            elif m and block:
                comments.setdefault(m.group(1), " ".join(block))
                after_comment = False
            else:
                block, after_comment = [], False

    out: list[str] = []

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key, value in node.items():
            field = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, field + ".")
                continue
            note = comments.get(field, "")
            out.append(f"--config.{field}={value}" + (f"  # {note}" if note else ""))

    walk(c, "")
    return out
