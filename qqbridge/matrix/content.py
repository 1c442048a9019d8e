"""Reading the JSON of a Matrix event, which any user may have shaped as they liked."""

from __future__ import annotations

from typing import Any


def json_object(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: a field such as
    `m.relates_to` that holds a list or a number is read as absent."""
    return value if isinstance(value, dict) else {}
