"""The CLI around the loop: publish (validation, bulk, --wait), ledger/audit/tail JSON, exit codes,
/metrics and /health, and ``sraq bench loop --json``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from click.testing import CliRunner
from redis.asyncio import Redis

from ledger import Keys
from ledger.turns import decode_entry
from orchestrator.cli import cli
from orchestrator.local_redis import free_port
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.settings import redact_url
from tests.orch_support import ROOT, loop_settings

TAIL_KEYS = {"conversation_id", "turn_id", "action", "args", "tier", "confidence", "latency_ms"}


def _env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "SRAQ_REDIS_URL": redis_url, "SRAQ_PREFIX": prefix, "SRAQ_PARTITIONS": "4", **extra}


def sraq(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


async def asraq(env: dict[str, str], *args: str | bytes) -> tuple[int, str, str]:
    """The CLI as a subprocess without blocking the event loop (an orchestrator may run in it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _stream_lengths(redis: Redis, prefix: str) -> int:
    return sum([await redis.xlen(pk.turns) for pk in Keys(prefix=prefix, partitions=4).all_partitions()])


async def test_publish_refuses_bad_input_with_exit_2(redis_url: str, prefix: str, redis: Redis,
                                                     tmp_path: Path) -> None:  # fmt: skip
    env = _env(redis_url, prefix, SRAQ_MAX_CONTENT_BYTES="64")
    cases = [
        ("publish", "bad id!", "hello"),
        ("publish", "c1", "x" * 65),
        ("publish", "c1", "hi", "--role", "robot"),
        ("publish", "c1", "hi", "--turn-id", "no spaces allowed"),
        ("publish", "c1"),
        ("ledger", "bad id!"),
        ("audit", "-x"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversation_id": "c1", "content": "fine"}\n{"conversation_id": "c 2", "content": "x"}\n')
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"conversation_id": "c1", "content": "x", "colour": "red"}\n')
    cases += [("publish", "--from-file", str(bad), "--json"), ("publish", "--from-file", str(unknown))]
    # not UTF-8: a lone surrogate (what undecodable argv bytes become), raw bytes and a \ud800 escape in a file
    not_utf8 = tmp_path / "not_utf8.jsonl"
    not_utf8.write_bytes(
        b'{"conversation_id": "c1", "content": "fine"}\n{"conversation_id": "c1", "content": "\xff"}\n'
    )
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"conversation_id": "c1", "content": "lone \\ud800 half"}\n')
    utf8_cases = [
        ("publish", "c1", "lone \ud800 half"),
        ("publish", "--from-file", str(not_utf8), "--json"),
        ("publish", "--from-file", str(surrogate)),
    ]
    cases += utf8_cases
    robot = tmp_path / "robot.jsonl"
    robot.write_text('{"conversation_id": "c1", "content": "x", "role": "robot"}\n')
    number = tmp_path / "number.jsonl"
    number.write_text('{"conversation_id": "c1", "content": 5}\n')
    cases += [("publish", "--from-file", str(robot)), ("publish", "--from-file", str(number))]
    # the refusal matrix in-process (the real command code; the interpreter start costs ~2 s a call here)
    runner = CliRunner()
    results = []
    for args in cases:
        res = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        results.append((res.exit_code, res.stdout, res.stderr))
    for args, (code, _out, err) in zip(cases, results, strict=True):
        assert code == 2, (args, err)
        assert err.strip().splitlines()[-1].startswith(("sraq: ", "Error: ")), (args, err)
        if args[0] == "publish" and len(args) > 2:
            assert len(err.strip().splitlines()) == 1, (args, err)  # our own refusals: one clear line
    bad_err, utf8_errs = results[-7][2], [err for _code, _out, err in results[-5:-2]]
    assert f"{robot}:1: unknown role 'robot'" in results[-2][2]
    assert f"{number}:1: bad line: Expected `str`, got `int` - at `$.content`" in results[-1][2]
    assert f"{bad}:2:" in bad_err and "conversation id" in bad_err
    assert "content is not valid UTF-8" in utf8_errs[0]
    assert f"{not_utf8}:2: line is not valid UTF-8 (byte 39 of the line)" in utf8_errs[1]
    assert f"{surrogate}:1: content is not valid UTF-8" in utf8_errs[2]
    assert await _stream_lengths(redis, prefix) == 0  # nothing published by any refused call
    unreachable = {**env, "SRAQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    # and through the real entry point (python -m orchestrator)
    (code, _, err), (tier_code, _, tier_err), (file_code, _, file_err), (argv_code, _, argv_err) = await asyncio.gather(
        asraq(unreachable, "publish", "c1", "hi"),
        asraq({**env, "SRAQ_INTENT_TIERS": "nope"}, "orchestrator"),
        asraq(env, "publish", "--from-file", str(bad)),
        asraq(env, "publish", "c1", b"raw \xff byte"),  # argv bytes that are not UTF-8
    )
    assert file_code == 2 and f"{bad}:2:" in file_err
    assert argv_code == 2 and argv_err.strip() == "sraq: content is not valid UTF-8 (character 4: '\\udcff')"
    assert await _stream_lengths(redis, prefix) == 0
    assert code == 1 and "cannot reach Redis" in err and len(err.strip().splitlines()) == 1
    assert tier_code == 2 and "unknown intent tier" in tier_err


async def test_publish_from_file_takes_null_for_the_optional_fields(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path
) -> None:
    """``turn_id`` and ``channel`` are optional: null means the default (a generated id, ``chat``)."""
    env = _env(redis_url, prefix)
    path = tmp_path / "nulls.jsonl"
    rows = [
        {"conversation_id": "nul", "content": "a", "turn_id": None, "channel": None},
        {"conversation_id": "nul", "content": "b", "turn_id": "nul-b", "channel": "voice"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = await asraq(env, "publish", "--from-file", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["published"] == 2
    keys = Keys(prefix=prefix, partitions=4)  # (SRAQ_PARTITIONS of _env)
    entries = await redis.xrange(keys.partition(keys.partition_of("nul")).turns)
    first, second = (decode_entry(fields) for _id, fields in entries)
    assert (first.content, first.channel) == ("a", "chat") and first.turn_id
    assert (second.content, second.channel, second.turn_id) == ("b", "voice", "nul-b")


async def test_publish_ledger_audit_tail_json(redis_url: str, prefix: str, redis: Redis, tmp_path: Path) -> None:
    env = _env(redis_url, prefix)
    lines = [{"conversation_id": f"cli-{c}", "content": f"m{i}", "turn_id": f"cli-{c}-{i}"} for i in range(5)
             for c in range(3)]  # fmt: skip
    lines.append({"conversation_id": "cli-0", "content": "start: plan a trip", "turn_id": "cli-0-start"})
    path = tmp_path / "turns.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = await asraq(env, "publish", "--from-file", str(path), "--json")
    assert code == 0, err
    bulk = json.loads(out)
    assert bulk["published"] == 16 and isinstance(bulk["seconds"], float)
    orch = Orchestrator(loop_settings(redis_url, prefix), ScriptedBackend())
    await orch.start()
    try:
        tail = asyncio.create_task(asraq(env, "tail", "--from-start", "--count", "17", "--json"))
        code, out, err = await asraq(env, "publish", "cli-0", "update: task-1: by train", "--wait", "--json")
        assert code == 0, err
        published = json.loads(out)
        assert published["decision"]["action"] == "update_task"
        assert published["decision"]["args"] == {"task_id": "task-1", "explanation": "by train"}
        code, out, err = await tail
        assert code == 0, err
    finally:
        await orch.stop()
    decisions = [json.loads(line) for line in out.splitlines()]
    assert len(decisions) == 17 and all(set(d) >= TAIL_KEYS for d in decisions)
    for conv in ("cli-0", "cli-1", "cli-2"):  # per conversation, in publish order
        mine = [d["turn_id"] for d in decisions if d["conversation_id"] == conv]
        assert mine[:5] == [f"{conv}-{i}" for i in range(5)]
    code, out, _ = await asraq(env, "ledger", "cli-0", "--json")
    ledger = json.loads(out)
    assert ledger["conversation_id"] == "cli-0" and ledger["version"] == 7 and ledger["applied_turns"] == 7
    task = ledger["tasks"][0]
    assert {k: task[k] for k in ("id", "status", "summary", "last_update", "version")} == {
        "id": "task-1", "status": "pending", "summary": "plan a trip", "last_update": "by train", "version": 2,
    }  # fmt: skip
    code, out, _ = await asraq(env, "audit", "cli-0", "--task", "task-1", "--json")
    audit = json.loads(out)
    assert [(a["op"], a["action"], a["ledger_version"]) for a in audit] == [
        ("start", "start_task", 6), ("update", "update_task", 7),
    ]  # fmt: skip
    assert {"turn_id", "op", "task_id", "action", "tier", "confidence", "ledger_version", "at"} <= set(audit[0])
    assert audit[0]["tier"] == "scripted" and audit[0]["confidence"] == 1.0
    # epoch milliseconds (INTERFACES.md: times are ms unless the key says otherwise), oldest first
    assert all(isinstance(a["at"], float) and abs(a["at"] - time.time() * 1000) < 600_000 for a in audit)
    assert audit[0]["at"] <= audit[1]["at"]
    code, out, _ = await asraq(env, "ledger", "never-seen", "--json")
    assert code == 0 and json.loads(out) == {"conversation_id": "never-seen", "version": 0, "tasks": [],
                                             "applied_turns": 0}  # fmt: skip


async def test_metrics_and_health_endpoints(redis_url: str, prefix: str) -> None:
    port = free_port()
    orch = Orchestrator(loop_settings(redis_url, prefix, metrics_port=port, metrics_host="127.0.0.1"),
                        ScriptedBackend())  # fmt: skip
    await orch.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
                health = await resp.json()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
    finally:
        await orch.stop()
    assert health["ok"] is True and health["partitions"] == [0, 1, 2, 3] and health["instance"] == orch.instance_id
    for name in ("sraq_decision_latency_seconds", "sraq_turns_processed", "sraq_version_conflicts",
                 "sraq_dead_letters", "sraq_stream_lag", "sraq_partitions_owned 4.0"):  # fmt: skip
        assert name in text, name
    assert orch.health()[0] is False  # stopped


def test_bench_loop_json(redis_url: str) -> None:
    # with a password in the URL (the test server's default user takes any): the JSON's "redis" redacts it
    scheme, sep, rest = redis_url.partition("://")
    secret_url = f"{scheme}{sep}default:s3cret@{rest}" if "@" not in rest else redis_url
    env = {**os.environ, "SRAQ_REDIS_URL": secret_url, "SRAQ_PARTITIONS": "4"}
    res = sraq(env, "bench", "loop", "--turns", "300", "--conversations", "20", "--rate", "200", "--seconds", "0.5",
               "--backend", "scripted", "--json", timeout=100)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "s3cret" not in res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["redis"] == redact_url(secret_url) and "***@" in out["redis"]
    assert out["turns"] == 300 and out["conversations"] == 20
    for key in ("throughput_turns_per_s", "floor_turns_per_s", "ratio_to_floor"):
        assert isinstance(out[key], float) and out[key] > 0
    assert set(out["overhead_ms"]) == {"p50", "p99"} and out["overhead_ms"]["p99"] >= out["overhead_ms"]["p50"] >= 0
    assert out["at_rate"]["turns"] == 100


def test_usage_errors_are_one_line_with_exit_2(redis_url: str, prefix: str) -> None:
    env = _env(redis_url, prefix)
    for args in (["publish", "--bogus"], ["ledger"], ["bench", "loop", "--turns", "abc"], ["nosuchcommand"]):
        res = sraq(env, *args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sraq: "), (args, res.stderr)
        assert res.stdout == ""
    bare = sraq(env)  # no command: the help, not an error
    assert bare.returncode == 0 and "Commands:" in bare.stdout
