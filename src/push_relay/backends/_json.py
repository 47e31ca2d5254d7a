"""Reading the JSON that push services answer with, which may be anything or nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (HTML error pages, garbage)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# Compact JSON, as push services are sent it; a bound method, so there is no wrapper per call.
to_json: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
