"""A real Redis for the fleet tests (127.0.0.1:6379, or TRIAGE_TEST_REDIS_URL), one random key
prefix a test, every key with a TTL, and only that prefix deleted afterwards (never FLUSH)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis

REDIS_URL = os.environ.get("TRIAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def new_prefix() -> str:
    return f"triage-test:{secrets.token_hex(6)}:"


async def delete_prefix(client: coredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(keys)


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[tuple[coredis.Redis, str]]:
    """A client and a fresh prefix; the prefix's keys are deleted on the way out."""
    client = coredis.Redis.from_url(REDIS_URL)
    prefix = new_prefix()
    async with client:
        try:
            yield client, prefix
        finally:
            await delete_prefix(client, prefix)
