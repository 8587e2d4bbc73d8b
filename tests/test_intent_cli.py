"""``sraq intent stub-server`` / ``sraq intent decide`` as real subprocesses, and the tier factory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from intent.calibration import Calibration
from intent.router import Router
from intent.sglang import SGLangBackend
from intent.stub_server import Latency, StubConfig, running
from orchestrator.backends import BackendConfigError, build_backend
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "stub server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("stub server never became healthy")


def sraq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_stub_server_and_decide_end_to_end() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "intent", "stub-server", "--port", str(port), "--latency-ms", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(url, proc)
        env = {
            "SRAQ_INTENT_TIERS": "sglang,openai",
            "SRAQ_SGLANG_URL": url,
            "SRAQ_OPENAI_BASE_URL": f"{url}/v1",
            "SRAQ_OPENAI_MODEL": "stub",
        }
        tasks = ["--task", "task-1=Find flights to Porto", "--task", "task-2=Book dinner"]
        out = sraq(
            "intent", "decide", "please cancel the flight search", *tasks, "--json", "--show-prompt", "harmony", env=env
        )
        assert out.returncode == 0, out.stderr
        decision = json.loads(out.stdout)
        assert decision["action"] == "cancel_task" and decision["args"]["task_id"] == "task-1"
        assert decision["tier"] == "sglang" and decision["path"][0]["outcome"] == "accepted"
        assert out.stderr.rstrip().endswith("<|start|>assistant<|channel|>final<|message|>")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # SIGTERM is a clean stop


def test_decide_failures_have_clear_exit_codes() -> None:
    bad_tier = sraq("intent", "decide", "hi", env={"SRAQ_INTENT_TIERS": "gpu9000"})
    assert bad_tier.returncode == 2 and "unknown intent tier" in bad_tier.stderr
    env = {"SRAQ_INTENT_TIERS": "sglang", "SRAQ_SGLANG_URL": "http://127.0.0.1:9"}
    down = sraq("intent", "decide", "hi", "--deadline-ms", "500", env=env)
    assert down.returncode == 1 and down.stderr.startswith("sraq: decision failed: sglang")
    bad_task = sraq("intent", "decide", "hi", "--task", "no-equals-sign")
    assert bad_task.returncode == 2


def test_factory_builds_the_configured_cascade() -> None:
    settings = Settings(
        intent_tiers="sglang,openai",
        sglang_url="http://gpu:30000",
        sglang_threshold=0.7,
        sglang_hedge_ms=120,
        openai_model="gpt-oss-120b",
        openai_api_key="sk-secret-value",  # type: ignore[arg-type]
    )
    router = build_backend(settings)
    assert isinstance(router, Router)
    student, teacher = router.tiers
    assert isinstance(student.backend, SGLangBackend) and student.backend.config.url == "http://gpu:30000"
    assert (student.threshold, student.deadline_s, student.hedge_after_s) == (0.7, 0.3, 0.12)
    assert (teacher.threshold, teacher.deadline_s) == (0.0, 15.0)
    assert "sk-secret-value" not in repr(teacher.backend)
    with pytest.raises(BackendConfigError):
        build_backend(Settings(intent_tiers="openai"))  # no model configured
    single = build_backend(Settings(intent_tiers="sglang"))
    assert isinstance(single, SGLangBackend)  # one tier is used as is (raw confidence, no threshold)


async def test_calibrate_writes_a_loadable_fit(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    async with running(StubConfig(latency=Latency(a=1.0), brain="embedded")) as url:
        args = ["intent", "calibrate", str(ROOT / "data" / "test.jsonl"), "--backend", "sglang", "--limit", "40"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            *args,
            "--output",
            str(out),
            "--json",
            env={**os.environ, "SRAQ_SGLANG_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["used"] == 40 and result["failed"] == 0
    cal = Calibration.load(out)
    assert cal.samples == 40 and cal.temperature == result["temperature"] > 0
