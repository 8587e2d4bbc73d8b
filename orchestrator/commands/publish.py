"""``sraq publish``: append turns to their partition streams (one, or a JSONL file in bulk)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click
import msgspec
from redis.asyncio import Redis

from ledger import Keys, Ledger
from ledger.turns import InvalidTurn, Publisher, Turn, make_turn
from orchestrator.commands.common import connect, fail, load_settings, print_json, run
from orchestrator.decision_feed import decode_decision
from orchestrator.settings import Settings

BULK_CHUNK = 1000


class FileTurn(msgspec.Struct, forbid_unknown_fields=True):
    """One line of ``--from-file``."""

    conversation_id: str
    content: str
    role: str = "user"
    turn_id: str | None = None
    #: null is the default, as for the other optional field (turn_id)
    channel: str | None = None


_line_decoder = msgspec.json.Decoder(FileTurn)


def parse_line(line: bytes) -> FileTurn:
    """One ``--from-file`` line; raises msgspec's errors, or UnicodeDecodeError for bytes that are not UTF-8."""
    try:
        return _line_decoder.decode(line)
    except msgspec.DecodeError as exc:
        # msgspec refuses a JSON escape of a lone surrogate ("\ud800") as "Input data was truncated";
        # the standard parser takes it, so that validation can name the real problem (not valid UTF-8)
        try:
            obj = json.loads(line)
        except ValueError:
            raise exc from None
        return msgspec.convert(obj, FileTurn)


def _bad_utf8_at(line: bytes) -> int:
    """1-based offset of the first byte of ``line`` that is not UTF-8 (0 when it all decodes)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start + 1
    return 0


def read_turns(path: Path, max_content_bytes: int) -> list[Turn]:
    """Parse and validate every line first: one bad line refuses the whole file (nothing published)."""
    turns: list[Turn] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", 2)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse_line(line)
            turns.append(
                make_turn(
                    row.conversation_id,
                    row.content,
                    role=row.role,
                    turn_id=row.turn_id,
                    channel=row.channel or "chat",
                    max_content_bytes=max_content_bytes,
                )
            )
        except UnicodeDecodeError:  # msgspec's own offset is within a string, not the line: find it
            fail(f"{path}:{number}: line is not valid UTF-8 (byte {_bad_utf8_at(line)} of the line)", 2)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            fail(f"{path}:{number}: bad line: {exc}", 2)
        except InvalidTurn as exc:
            fail(f"{path}:{number}: {exc.reason}", 2)
    return turns


async def _bulk(settings: Settings, turns: list[Turn]) -> dict[str, object]:
    redis = connect(settings)
    try:
        publisher = Publisher(redis, settings.keys(), max_content_bytes=settings.max_content_bytes)
        started = time.perf_counter()
        for i in range(0, len(turns), BULK_CHUNK):
            await publisher.publish_many(turns[i : i + BULK_CHUNK])
        return {"published": len(turns), "seconds": round(time.perf_counter() - started, 4)}
    finally:
        await redis.aclose()


async def _last_id(redis: Redis, stream: str) -> str:
    last = await redis.xrevrange(stream, count=1)
    return str(last[0][0].decode()) if last else "0-0"


async def _wait_decision(redis: Redis, keys: Keys, turn: Turn, after: str, wait_s: float) -> dict[str, object] | None:
    stream = keys.partition(keys.partition_of(turn.conversation_id)).decisions
    ledger = Ledger(redis, keys)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        reply = await redis.xread({stream: after}, count=100, block=250)
        for _name, entries in reply or ():
            for entry_id, fields in entries:
                after = entry_id.decode()
                line = decode_decision(fields)
                if line["turn_id"] == turn.turn_id and line["conversation_id"] == turn.conversation_id:
                    return line
        if not reply and await ledger.was_applied(turn.conversation_id, turn.turn_id):
            await asyncio.sleep(0.1)  # the commit is visible; its decision entry may be before `after`
            if await ledger.was_applied(turn.conversation_id, turn.turn_id):
                return {"duplicate": True}
    return None


async def _single(settings: Settings, turn: Turn, wait: bool, wait_s: float) -> dict[str, object]:
    redis = connect(settings)
    keys = settings.keys()
    try:
        publisher = Publisher(redis, keys, max_content_bytes=settings.max_content_bytes)
        partition = keys.partition_of(turn.conversation_id)
        after = await _last_id(redis, keys.partition(partition).decisions) if wait else "0-0"
        entry_id = await publisher.publish(turn)
        out: dict[str, object] = {
            "conversation_id": turn.conversation_id,
            "turn_id": turn.turn_id,
            "partition": partition,
            "entry_id": entry_id,
        }
        if wait:
            decision = await _wait_decision(redis, keys, turn, after, wait_s)
            if decision is None:
                fail(f"turn {turn.turn_id} published but not decided within {wait_s:g}s (is an orchestrator running?)")
            out["decision"] = decision
        return out
    finally:
        await redis.aclose()


@click.command("publish")
@click.argument("conversation", required=False)
@click.argument("text", required=False)
@click.option("--role", default="user", show_default=True, help="user, assistant or tool.")
@click.option("--turn-id", default=None, help="Idempotency key (default: generated).")
@click.option("--channel", default="chat", show_default=True, help="voice, chat, whatsapp, discord, ...")
@click.option("--from-file", "from_file", type=click.Path(path_type=Path), default=None, help="JSONL, one turn a line.")
@click.option("--wait", is_flag=True, help="Wait for the turn's decision and print it.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds --wait waits.")
@click.option("--redis-url", default=None, help="Overrides SRAQ_REDIS_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def publish(
    conversation: str | None,
    text: str | None,
    role: str,
    turn_id: str | None,
    channel: str,
    from_file: Path | None,
    wait: bool,
    timeout: float,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Publish one turn (CONVERSATION TEXT) or every line of --from-file, in order.

    Examples: sraq publish conv-1 "book me a table for two" --wait;
    sraq publish --from-file turns.jsonl --json
    """
    settings = load_settings(redis_url=redis_url)
    if from_file is not None:
        if conversation is not None or text is not None:
            fail("give either CONVERSATION TEXT or --from-file, not both", 2)
        turns = read_turns(from_file, settings.max_content_bytes)
        result = run(_bulk(settings, turns), settings)
        if as_json:
            print_json(result)
        else:
            click.echo(f"published {result['published']} turns in {result['seconds']} s")
        return
    if conversation is None or text is None:
        fail("missing CONVERSATION and TEXT (or use --from-file FILE.jsonl)", 2)
    try:
        turn = make_turn(
            conversation, text, role=role, turn_id=turn_id, channel=channel,
            max_content_bytes=settings.max_content_bytes,
        )  # fmt: skip
    except InvalidTurn as exc:
        fail(exc.reason, 2)
    out = run(_single(settings, turn, wait, timeout), settings)
    if as_json:
        print_json(out)
        return
    click.echo(f"published {out['turn_id']} to partition {out['partition']} ({out['entry_id']})")
    if wait:
        click.echo(json.dumps(out["decision"], ensure_ascii=False))
