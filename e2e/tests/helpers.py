"""Small assertions shared by the end-to-end tests."""

from __future__ import annotations

import uuid

from mcp import MCPError


def find_mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError inside `exc`, which the SDK may wrap in (nested) exception groups."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_mcp_error(inner)
            if found is not None:
                return found
    if exc.__cause__ is not None:
        return find_mcp_error(exc.__cause__)
    return None


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except (ValueError, TypeError):
        return False
