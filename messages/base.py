"""Base of everything that crosses a channel."""

import msgspec


class Message(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="kind"):
    """Frozen, keyword-only, tagged so a union decodes from JSON or TOML."""
