"""``demo``: simulated multi-step work with progress, honouring updates between steps (``sraq demo``)."""

from __future__ import annotations

import asyncio

from workers.context import TaskContext


async def demo(ctx: TaskContext) -> str:
    """``demo_steps`` steps of ``demo_step_s`` each; a ``progress`` event after every step but the last.

    Updates that arrive while it works are picked up at the next step boundary and shape the result.
    Cancellation stops it inside the current step (the sleep is the ``await`` that gets cancelled).
    """
    steps = max(1, ctx.config.demo_steps)
    notes = [u.text for u in await ctx.poll_updates()]  # updates sent before this run started
    for step in range(1, steps + 1):
        await asyncio.sleep(ctx.config.demo_step_s)
        new = [u.text for u in await ctx.poll_updates()]
        notes.extend(new)
        if step < steps:
            line = f"step {step}/{steps}: working on {ctx.explanation}"
            if new:
                line += f" (now with: {'; '.join(new)})"
            await ctx.progress(line)
    result = f"done: {ctx.explanation}"
    if notes:
        result += f" (with updates: {'; '.join(notes)})"
    return result
