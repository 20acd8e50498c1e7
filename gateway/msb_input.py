"""Reading a hostile JSON body one field at a time, each refusal naming the field's path.

A create body comes from a tenant: any value may have any JSON type, any list may be huge,
any string may be megabytes or hold a NUL. The translation in :mod:`.translate` reads every
value through these helpers, which check the type and bound *before* anything iterates or
copies, so that a wrong type or an oversized list becomes :class:`InvalidConfig` naming the
request-body path (``mounts[1].size_mib``), never a ``KeyError``/``TypeError`` deep inside,
and never work proportional to an attacker's list.

``bool`` is a subclass of ``int`` in Python and pydantic's lax mode turns ``true`` into ``1``;
the integer helpers refuse booleans explicitly, since ``"vcpus": true`` is a client bug that
should not quietly become one vCPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_SHOWN_KEY = 64
"""Longest tenant-chosen key (label, script name) quoted verbatim inside a field path."""


class InvalidConfig(ValueError):
    """The create body cannot become a Sandbox; ``field`` is a path in the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def join(path: str, key: str | int) -> str:
    """``join("mounts", 1)`` → ``mounts[1]``; ``join("runtime", "user")`` → ``runtime.user``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def shown(key: str) -> str:
    """A tenant-chosen key as it may appear in a field path: short, printable, unambiguous."""
    if len(key) <= MAX_SHOWN_KEY and key.isprintable() and key.strip() == key and key:
        return key
    quoted = json.dumps(key[:MAX_SHOWN_KEY])
    if len(key) <= MAX_SHOWN_KEY and len(quoted) <= MAX_SHOWN_KEY + 2:
        return quoted
    return quoted[: MAX_SHOWN_KEY + 1] + '..."'


def type_name(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def obj(value: object, path: str, known: frozenset[str]) -> Mapping[str, Any]:
    """A JSON object whose keys are all in ``known``; an unknown key is an option we cannot
    honour, so it is refused rather than ignored."""
    if not isinstance(value, Mapping):
        raise InvalidConfig(path, f"must be an object, not {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidConfig(path, "object keys must be strings")
        if key not in known:
            raise InvalidConfig(
                join(path, shown(key)),
                "unknown option: kubesandbox does not know it and refuses it rather than "
                "ignoring it (known here: " + ", ".join(sorted(known)) + ")",
            )
    return value


def opt_obj(value: object, path: str, known: frozenset[str]) -> Mapping[str, Any]:
    """Like :func:`obj`, with ``null`` read as an empty object."""
    return {} if value is None else obj(value, path, known)


def array(value: object, path: str, max_items: int) -> list[Any]:
    """A JSON array of at most ``max_items`` items (``null`` is empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidConfig(path, f"must be an array, not {type_name(value)}")
    if len(value) > max_items:
        raise InvalidConfig(path, f"has {len(value)} items; at most {max_items} are allowed")
    return value


def string(value: object, path: str, max_len: int, *, empty: bool = False) -> str:
    """A string of at most ``max_len`` characters without NUL (empty only if allowed)."""
    if not isinstance(value, str):
        raise InvalidConfig(path, f"must be a string, not {type_name(value)}")
    if len(value) > max_len:
        raise InvalidConfig(path, f"is {len(value)} characters long; at most {max_len} allowed")
    if not value and not empty:
        raise InvalidConfig(path, "must not be empty")
    if "\x00" in value:
        raise InvalidConfig(path, "must not contain NUL characters")
    return value


def opt_string(value: object, path: str, max_len: int) -> str | None:
    """``null`` or a non-empty :func:`string`."""
    return None if value is None else string(value, path, max_len)


def integer(value: object, path: str, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]``; booleans and fractions are refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig(path, f"must be a whole number, not {type_name(value)}")
    if not lo <= value <= hi:
        raise InvalidConfig(path, f"must be between {lo} and {hi}, not {value}")
    return value


def opt_integer(value: object, path: str, lo: int, hi: int) -> int | None:
    """``null`` or an :func:`integer`."""
    return None if value is None else integer(value, path, lo, hi)


def boolean(value: object, path: str, *, default: bool | None = None) -> bool:
    """``true`` or ``false``; ``null`` is ``default`` when one is given."""
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise InvalidConfig(path, f"must be true or false, not {type_name(value)}")
    return value


def strings(value: object, path: str, max_items: int, max_len: int) -> list[str]:
    """An array of strings (each may be empty, as argv items may)."""
    items = array(value, path, max_items)
    return [string(item, join(path, i), max_len, empty=True) for i, item in enumerate(items)]
