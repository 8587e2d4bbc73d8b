"""Task handlers used by the worker tests, registered the way users register theirs (settings paths)."""

from __future__ import annotations

import asyncio

from workers.context import TaskContext


async def fail_always(ctx: TaskContext) -> str:
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


async def hang_first(ctx: TaskContext) -> str:
    """The first attempt never finishes (its worker gets killed); later attempts finish at once."""
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    return f"finished on attempt {ctx.attempt}"


async def first_update(ctx: TaskContext) -> str:
    """Waits (blocking iterator) for the first update and returns its text."""
    async for update in ctx.updates():
        return f"got update: {update.text}"
    return "no update"


async def wait_for_cancel(ctx: TaskContext) -> str:
    await ctx.progress("waiting to be cancelled")
    await asyncio.sleep(3600)
    return "not cancelled"
