"""Find the line of a key in TOML text, so spec errors can say where to look.

tomllib returns plain dicts without positions; a spec is small and written by hand, so a scan
for the table header and then the key is exact for the usual layouts (`[grid]` then
`epsilon = ...`, `[[variants]]` blocks, dotted keys, inline tables on one line).
"""

from __future__ import annotations

import re
from typing import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _key_pattern(key: str) -> re.Pattern[str]:
    quoted = re.escape(key)
    return re.compile(rf"""^\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*(?:=|\.)""")


def _table_blocks(lines: Sequence[str]) -> list[tuple[str, bool, int]]:
    """(table name, is array-of-tables, first line index) for every header, in order."""
    blocks = []
    for index, line in enumerate(lines):
        match = _HEADER.match(line)
        if match:
            blocks.append((match.group(2).strip(), match.group(1) == "[[", index))
    return blocks


def _block_range(lines: Sequence[str], table: str | None, occurrence: int) -> tuple[int, int] | None:
    """Line range (start, stop) of the body of `table` (None: the top level before any header)."""
    blocks = _table_blocks(lines)
    if table is None:
        return 0, blocks[0][2] if blocks else len(lines)
    seen = 0
    for position, (name, _is_array, start) in enumerate(blocks):
        if name != table:
            continue
        if seen == occurrence:
            stop = blocks[position + 1][2] if position + 1 < len(blocks) else len(lines)
            return start, stop
        seen += 1
    return None


def find_line(text: str, location: Sequence[str | int]) -> int | None:
    """1-based line of `location` (e.g. ("grid", "epsilon") or ("variants", 1, "model")), or None.

    Falls back to the table's header line when the key itself cannot be found (a key written
    in an unusual form), and to a key anywhere in the file for top-level dotted forms.
    """
    lines = text.splitlines()
    parts = list(location)
    if not parts:
        return None
    if len(parts) == 1 or not isinstance(parts[0], str):
        table, occurrence, key = None, 0, parts[0]
    elif len(parts) >= 3 and isinstance(parts[1], int):
        table, occurrence, key = parts[0], parts[1], parts[2]
    else:
        table, occurrence, key = parts[0], 0, parts[1]
    if table is not None:
        span = _block_range(lines, str(table), occurrence)
        if span is not None:
            start, stop = span
            pattern = _key_pattern(str(key))
            for index in range(start + 1, stop):
                if pattern.match(lines[index]):
                    return index + 1
            return start + 1
        # written as a dotted key or inline table at the top level: `grid.epsilon = [...]`
        key_regex = re.compile(rf"\b{re.escape(str(table))}\b.*\b{re.escape(str(key))}\b")
        for index, line in enumerate(lines):
            if key_regex.search(line):
                return index + 1
        return None
    span = _block_range(lines, None, 0)
    pattern = _key_pattern(str(key))
    for index in range(*span):
        if pattern.match(lines[index]):
            return index + 1
    header = _block_range(lines, str(key), 0)
    return header[0] + 1 if header else None
