"""Small assertions and request pieces shared by the end-to-end tests."""

from __future__ import annotations

import uuid


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except (ValueError, TypeError):
        return False


# A one-message conversation, for requests whose judgement is about their model and tools.
HELLO = [{"role": "user", "content": "hello"}]


def tool(name: str) -> dict:
    """An OpenAI Chat function tool declaration named `name`."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
