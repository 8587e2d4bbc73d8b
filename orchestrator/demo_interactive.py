"""``sraq demo --interactive``: type turns into one conversation and watch its decisions and ledger."""

from __future__ import annotations

import asyncio
import uuid

from rich.console import Console

from ledger.turns import InvalidTurn, make_turn
from orchestrator.demo import STEP_TIMEOUT_S, DemoPlayer, _ledger_table, demo_stack
from orchestrator.settings import Settings

HELP = "Type a message and press Enter (':tool TEXT' sends a tool message, ':quit' or Ctrl-D ends)."


async def run_interactive(settings: Settings, *, workers: int = 2) -> None:
    console = Console()
    conv = f"demo-{uuid.uuid4().hex[:6]}-you"
    async with demo_stack(settings, console, workers=workers) as (redis, keys):
        player = DemoPlayer(redis, keys, console, quiet=False)
        player.conv_ids = {conv}
        player.titles = {conv: "you"}
        feed = asyncio.create_task(player.feed(), name="demo-feed")
        console.print(HELP)
        try:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                line = line.strip()
                if line in (":quit", ":q"):
                    break
                if not line:
                    snap = await player.ledger.snapshot(conv)
                    console.print(_ledger_table(snap, "ledger"))
                    continue
                role, text = ("tool", line[6:].strip()) if line.startswith(":tool ") else ("user", line)
                try:
                    turn = make_turn(conv, text, role=role)
                except InvalidTurn as exc:
                    console.print(f"[red]{exc.reason}[/red]")
                    continue
                fut: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
                player.waiters[turn.turn_id] = fut
                await player.publisher.publish(turn)
                try:
                    await asyncio.wait_for(fut, STEP_TIMEOUT_S)
                except TimeoutError:
                    console.print("[red]no decision yet (is the orchestrator healthy?)[/red]")
                await asyncio.sleep(0.2)
                console.print(_ledger_table(await player.ledger.snapshot(conv), "ledger"))
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
