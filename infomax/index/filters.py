"""Filters on item metadata: parsing and checking one, and finding the ids it matches in
``metadata.sqlite`` (the search itself is in ``filtered.py``).

A filter is a JSON object (a dict); every condition in it must hold (AND)::

    {"label": 3}                               label equal to 3
    {"label": {"in": [3, 5]}}                  label one of 3, 5
    {"source": "photos/a.png"}                 source equal to the string
    {"source": {"in": ["a.png", "b.png"]}}     source one of the strings
    {"source": {"prefix": "photos/2023/"}}     source starting with the string (a folder)
    {"meta.camera": "x100"}                    the item's meta key "camera" equal to "x100"
    {"meta.exif.iso": {"in": [100, 200]}}      nested keys by dots; values: strings, numbers, booleans
    {"meta.folder": {"prefix": "holidays"}}    a string value starting with the string

Values compare with their JSON types: a string matches strings only, a number numbers only (3 and
3.0 are equal), ``true``/``false`` booleans only; an item without the key, or with null, a list or
an object there, never matches. An empty ``in`` list matches nothing; ``{}`` matches every item.
Limits (each refused with a ``SettingError``, a ValueError, naming the key): at most :data:`MAX_CONDITIONS` keys,
:data:`MAX_IN_VALUES` values in an ``in`` list, :data:`MAX_STRING` characters in a string,
integers within int64; a meta key is ``meta.`` and up to :data:`MAX_DEPTH` dot-separated names of
1 to 128 printable characters other than ``"``, ``\\`` and ``.`` (a stored key that holds one of
those cannot be filtered on).

The SQL is fixed text with every value, JSON path included, bound as a parameter: nothing a user
gives is ever spliced into a statement. ``label`` and ``source`` conditions use the store's
indexes on those columns (``store.FILTER_INDEXES``); ``meta.*`` conditions read every row's JSON
(about 1 microsecond per item).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from infomax.errors import SettingError

MAX_IN_VALUES = 1000  # values in one {"in": [...]} list
MAX_CONDITIONS = 16  # keys in one filter
MAX_STRING = 4096  # characters in one string value (ItemMetadata.source allows as many)
MAX_DEPTH = 8  # names in a meta key path (meta.a.b.c...)
_MAX_NAME = 128
_INT64 = (-(2**63), 2**63 - 1)

Scalar = str | int | float | bool

FORMS = 'a value, {"in": [values]} or {"prefix": "text"} (prefix: strings only); keys: "label", "source" or "meta.<key>"'


@dataclass(frozen=True)
class Condition:
    """One key of a filter: ``key`` ("label", "source" or "meta.a.b"), ``op`` ("eq", "in" or
    "prefix") and its values (one for eq and prefix)."""

    key: str
    op: str
    values: tuple[Scalar, ...]

    def spec(self) -> Any:
        if self.op == "eq":
            return self.values[0]
        return {self.op: list(self.values) if self.op == "in" else self.values[0]}


@dataclass(frozen=True)
class Filter:
    """A parsed, checked filter (see the module docstring): build one with :func:`parse_filter`."""

    conditions: tuple[Condition, ...]

    @property
    def empty(self) -> bool:
        """True for ``{}``: every item matches."""
        return not self.conditions

    def to_dict(self) -> dict[str, Any]:
        return {c.key: c.spec() for c in self.conditions}

    @property
    def key(self) -> str:
        """Canonical JSON text: equal filters have equal keys (cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def where(self) -> tuple[str, list[Any]]:
        """(SQL boolean expression over the ``items`` table, its bound parameters)."""
        if self.empty:
            return "1", []
        parts, params = [], []
        for c in self.conditions:
            sql, p = _condition_sql(c)
            parts.append(sql)
            params.extend(p)
        return " AND ".join(f"({s})" for s in parts), params

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


# --------------------------------------------------------------------------- parsing


def _bad(message: str) -> SettingError:
    """The error of a bad filter: a SettingError (a ValueError) about the setting "filter"."""
    return SettingError(message, setting="filter")


def parse_filter(spec: Filter | Mapping[str, Any] | str) -> Filter:
    """A filter from a dict, or from its JSON text (the command line, a multipart field).

    Raises :class:`~infomax.errors.SettingError` (a ValueError, ``setting="filter"``) naming the key
    and what is allowed for anything else: an unknown key, a value of the wrong type, an unknown
    operator, an ``in`` list over :data:`MAX_IN_VALUES`..."""
    if isinstance(spec, Filter):
        return spec
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _bad(f'filter is not valid JSON ({e}); expected an object such as {{"label": 3}}') from None
        except RecursionError:
            raise _bad("filter is not valid JSON (nested too deeply)") from None
    if not isinstance(spec, Mapping):
        raise _bad(f'filter must be a JSON object such as {{"label": 3}}, got {_type(spec)}')
    if len(spec) > MAX_CONDITIONS:
        raise _bad(f"filter has {len(spec)} keys; at most {MAX_CONDITIONS} are allowed")
    conditions = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise _bad(f"filter key {key!r} is not a string; {FORMS}")
        conditions.append(_parse_condition(key, value))
    conditions.sort(key=lambda c: c.key)  # canonical order (the conditions are ANDed)
    return Filter(tuple(conditions))


def as_filter(spec: Filter | Mapping[str, Any] | str | None) -> Filter | None:
    """:func:`parse_filter`, with None and ``{}`` (match everything) both giving None."""
    if spec is None:
        return None
    flt = parse_filter(spec)
    return None if flt.empty else flt


def _parse_condition(key: str, value: Any) -> Condition:
    field = _check_key(key)
    name = json.dumps(key, ensure_ascii=False)
    if isinstance(value, Mapping):
        if len(value) != 1:
            ops = ", ".join(map(repr, value)) or "none"
            raise _bad(f'filter {name}: give exactly one operator, "in" or "prefix" (got {ops}); {FORMS}')
        ((op, arg),) = value.items()
        if op == "in":
            if not isinstance(arg, (list, tuple)):
                raise _bad(f'filter {name}: "in" takes a list of values, got {_type(arg)}')
            if len(arg) > MAX_IN_VALUES:
                raise _bad(
                    f'filter {name}: "in" holds {len(arg)} values; at most {MAX_IN_VALUES} are allowed '
                    "(split the search, or filter on a coarser key)"
                )
            values = [_check_value(name, field, v, f"in[{i}]") for i, v in enumerate(arg)]
            return Condition(key, "in", _unique(values))
        if op == "prefix":
            if field == "label":
                raise _bad(f'filter {name}: "prefix" applies to strings (source, meta keys), not to the label')
            if not isinstance(arg, str):
                raise _bad(f'filter {name}: "prefix" takes a string, got {_type(arg)}')
            return Condition(key, "prefix", (_check_value(name, field, arg, "prefix"),))
        raise _bad(f"filter {name}: unknown operator {op!r}; use {FORMS}")
    return Condition(key, "eq", (_check_value(name, field, value, "value"),))


def _check_key(key: str) -> str:
    """'label', 'source' or 'meta' (for a valid meta key path)."""
    if key in ("label", "source"):
        return key
    if key.startswith("meta."):
        names = key[len("meta.") :].split(".")
        if len(names) > MAX_DEPTH:
            raise _bad(f"filter key {key[:200]!r}: at most {MAX_DEPTH} nested names after 'meta.'")
        for n in names:
            if not n or len(n) > _MAX_NAME or not n.isprintable() or '"' in n or "\\" in n:
                raise _bad(
                    f"filter key {key[:200]!r}: each name after 'meta.' must be 1 to {_MAX_NAME} "
                    'printable characters other than ", \\ and . (dots separate nested keys)'
                )
        return "meta"
    hint = " (meta keys are written meta.<key>)" if key == "meta" else ""
    raise _bad(f"filter key {key[:200]!r} is not filterable{hint}; {FORMS}")


def _check_value(name: str, field: str, v: Any, where: str) -> Scalar:
    if field == "label":
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise _bad(f"filter {name}: {where} must be an integer label, got {_show(v)}")
        if not _INT64[0] <= int(v) <= _INT64[1]:
            raise _bad(f"filter {name}: {where} {int(v)} is beyond int64, which labels are")
        return int(v)
    if field == "source":
        if not isinstance(v, str):
            raise _bad(f"filter {name}: {where} must be a string, got {_show(v)}")
    elif v is None or not isinstance(v, (str, bool, int, float, np.integer, np.floating)):
        raise _bad(f"filter {name}: {where} must be a string, number or boolean, got {_show(v)}")
    if isinstance(v, str):
        if len(v) > MAX_STRING:
            raise _bad(f"filter {name}: {where} is a string of {len(v)} characters; at most {MAX_STRING}")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"filter {name}: {where} is not valid Unicode text (a lone surrogate)") from None
        return v
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, np.integer)):
        if not _INT64[0] <= int(v) <= _INT64[1]:
            raise _bad(f"filter {name}: {where} {int(v)} is beyond int64")
        return int(v)
    if not math.isfinite(float(v)):
        raise _bad(f"filter {name}: {where} must be a finite number, got {float(v)}")
    return float(v)


def _unique(values: list[Scalar]) -> tuple[Scalar, ...]:
    """Values in order without repeats; True and 1 stay apart (Python holds them equal)."""
    seen: set[tuple[bool, Scalar]] = set()
    out = []
    for v in values:
        tag = (isinstance(v, bool), v)
        if tag not in seen:
            seen.add(tag)
            out.append(v)
    return tuple(out)


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(v), type(v).__name__
    )


def _show(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=repr) if v is None or isinstance(v, (str, bool)) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- SQL


def _json_path(key: str) -> str:
    """'meta.a.b' -> '$."a"."b"' (names are checked: no quote, backslash or dot inside)."""
    return "$" + "".join(f'."{n}"' for n in key[len("meta.") :].split("."))


def _prefix_range(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` in SQLite's BINARY order
    (UTF-8 bytes, i.e. code points): its last character plus one (skipping the surrogates), or
    None when there is none (a prefix of U+10FFFF characters)."""
    chars = list(prefix)
    while chars:
        c = ord(chars.pop()) + 1
        if c == 0xD800:
            c = 0xE000
        if c <= 0x10FFFF:
            return "".join(chars) + chr(c)
    return None


def _column_sql(column: str, op: str, values: tuple[Scalar, ...]) -> tuple[str, list[Any]]:
    """label / source conditions: range and IN lookups the column's index answers."""
    if op == "eq":
        return f"{column} = ?", [values[0]]
    if op == "in":
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(values))]
    prefix = str(values[0])
    upper = _prefix_range(prefix)
    if upper is None:
        return f"{column} >= ?", [prefix]
    return f"{column} >= ? AND {column} < ?", [prefix, upper]


def _condition_sql(c: Condition) -> tuple[str, list[Any]]:
    if c.key in ("label", "source"):
        return _column_sql(c.key, c.op, c.values)
    path = _json_path(c.key)
    if c.op == "prefix":
        prefix = str(c.values[0])
        return ("json_type(meta, ?) = 'text' AND substr(json_extract(meta, ?), 1, ?) = ?", [path, path, len(prefix), prefix])
    # one group per JSON type, so that "3" never matches 3 nor true match 1
    texts = [v for v in c.values if isinstance(v, str)]
    numbers = [v for v in c.values if not isinstance(v, (str, bool))]
    bools = {v for v in c.values if isinstance(v, bool)}
    groups: list[str] = []
    params: list[Any] = []
    if texts:
        groups.append("(json_type(meta, ?) = 'text' AND json_extract(meta, ?) IN (SELECT value FROM json_each(?)))")
        params += [path, path, json.dumps(texts, ensure_ascii=False)]
    if numbers:
        groups.append("(json_type(meta, ?) IN ('integer', 'real') AND json_extract(meta, ?) IN (SELECT value FROM json_each(?)))")
        params += [path, path, json.dumps(numbers)]
    for b in sorted(bools):
        groups.append("json_type(meta, ?) = ?")
        params += [path, "true" if b else "false"]
    if not groups:  # {"in": []}
        return "0", []
    return " OR ".join(groups), params


def matching_ids(conn: sqlite3.Connection, flt: Filter) -> np.ndarray:
    """Sorted int64 ids of the items ``flt`` matches (one query; ids come back as one text)."""
    where, params = flt.where()
    count, text = conn.execute(f"SELECT COUNT(*), group_concat(id) FROM items WHERE {where}", params).fetchone()
    if not count:
        return np.zeros(0, dtype=np.int64)
    ids = np.fromstring(text, dtype=np.int64, sep=",")  # ~10x faster than a row per id
    if len(ids) != count:  # pragma: no cover - ids are integers: the text always parses whole
        raise RuntimeError(f"metadata store: {count} matching ids but {len(ids)} parsed")
    ids.sort()
    return ids


def distinct_labels(conn: sqlite3.Connection, limit: int = MAX_IN_VALUES) -> list[int]:
    """The labels items carry, ascending, at most ``limit`` of them (the label index answers)."""
    rows = conn.execute(
        "SELECT DISTINCT label FROM items WHERE label IS NOT NULL ORDER BY label LIMIT ?", (int(limit),)
    ).fetchall()
    return [int(r[0]) for r in rows]
