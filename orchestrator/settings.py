"""The one settings object, built at the entry point from ``SRAQ_*`` environment variables and flags."""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import unquote

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger import Keys

#: Query parameters of a Redis URL that redis-py passes to the connection as credentials.
SECRET_URL_PARAMS = frozenset({"password", "username"})


def default_embedded_processes() -> int:
    """One child process for the embedded model when this process may use two CPUs or more, else 0.

    The model is pure-Python CPU work; in a child it runs beside the event loop instead of inside it
    (``sraq bench loop`` on 2 vCPUs: ~1.2-1.45x the saturated throughput of the inline model). With
    one CPU the child would only add a pipe round trip per decision.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cpus >= 2 else 0


def redact_url(url: str) -> str:
    """``url`` safe to print or log: the user info (``user:password@``) becomes ``***@`` and the value
    of a ``password=``/``username=`` query parameter ``***``; scheme, host, port, path and db stay.

    The whole user info goes, not only the password: redis-py reads ``redis://s3cret@host`` as a user
    name, but people write that form meaning a password. Plain string surgery rather than
    ``urllib.parse`` round trips, which rewrite ``unix:///path`` as ``unix:/path``.
    """
    head, sep, query = url.partition("?")
    scheme, has_scheme, rest = head.partition("://")
    if not has_scheme:
        scheme, rest = "", head
    if "@" in rest:  # the last "@": an unencoded "/" or "#" in a password must not shorten the cut
        rest = "***@" + rest.rpartition("@")[2]
    redacted = f"{scheme}{has_scheme}{rest}"
    if sep:
        pieces = query.split("&")
        for i, piece in enumerate(pieces):
            name = piece.partition("=")[0]
            if unquote(name).lower() in SECRET_URL_PARAMS:
                pieces[i] = f"{name}=***"
        redacted += sep + "&".join(pieces)
    return redacted


class Settings(BaseSettings):
    """Every knob of a deployment. Build it once (``Settings()``) and pass it down explicitly."""

    model_config = SettingsConfigDict(env_prefix="SRAQ_", extra="ignore", frozen=True)

    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL (rediss:// and passwords ok)")
    prefix: str = Field("sraq", description="Prefix of every Redis key")
    partitions: int = Field(16, ge=1, le=16384, description="Number of turn-stream partitions (fixed)")
    transcript_max: int = Field(50, ge=1, description="Messages kept per conversation transcript")

    # intent tiers
    intent_tiers: str = Field("embedded", description="Comma-separated cascade, e.g. embedded,sglang,openai")
    embedded_model: str | None = Field(None, description="Path of an embedded model artefact (default: shipped)")
    embedded_processes: int = Field(
        default_factory=default_embedded_processes,
        ge=0,
        description="Child processes running the embedded model for the orchestrator (0: inline; default 1, "
        "or 0 on a machine with one CPU)",
    )
    sglang_url: str = Field("http://localhost:30000", description="SGLang server for the student tier")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible base URL for the teacher tier")
    openai_model: str | None = Field(None, description="Teacher model name")
    openai_api_key: SecretStr | None = Field(None, description="Teacher API key (never logged)")
    sglang_model: str | None = Field(None, description="Model served by the SGLang student (informational)")
    sglang_threshold: float = Field(0.8, ge=0, le=1, description="Student: accept at or above this confidence")
    sglang_deadline_ms: int = Field(300, ge=1, description="Student: deadline of one decision")
    sglang_hedge_ms: int | None = Field(None, ge=1, description="Student: start the next tier in parallel after")
    sglang_format: Literal["json", "call"] = Field(
        "json", description="Student output: json (json_schema) or call (ebnf)"
    )
    sglang_stream: bool = Field(False, description="Student: stream /generate and record the early decision")
    sglang_max_new_tokens: int = Field(160, ge=8, description="Student: max_new_tokens of a decision")
    sglang_lora_path: str | None = Field(None, description="Student: LoRA adapter name passed as lora_path")
    sglang_calibration: str | None = Field(None, description="Student: calibration JSON (sraq intent calibrate)")
    openai_threshold: float = Field(0.0, ge=0, le=1, description="Teacher: accept at or above this confidence")
    openai_deadline_ms: int = Field(15000, ge=1, description="Teacher: deadline of one decision")
    openai_reasoning_effort: str | None = Field("low", description="Teacher: reasoning_effort (gpt-oss refuses none)")
    openai_logprobs: bool = Field(True, description="Teacher: ask for logprobs (confidence 1 when absent)")
    openai_calibration: str | None = Field(None, description="Teacher: calibration JSON")
    embedded_threshold: float = Field(0.9, ge=0, le=1, description="Embedded tier: accept at or above this confidence")
    embedded_deadline_ms: int = Field(50, ge=1, description="Embedded tier: deadline of one decision")

    # workers and the outbox relay (issue 4; docs/workers.md)
    worker_handler: str = Field("demo", description="Task handler run by `sraq workers`: a name or module:function")
    handler_paths: str = Field("", description="Extra task handlers, comma-separated name=module:function")
    worker_max_jobs: int = Field(20, ge=1, description="Jobs one worker process runs at once")
    worker_poll_delay_s: float = Field(
        0.02, ge=0.001, le=5, description="arq poll interval: bounds job pickup and cancel latency"
    )
    worker_shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, seconds running jobs get to finish before they are re-queued"
    )
    worker_health_interval_s: float = Field(10.0, gt=0, description="Seconds between worker health records")
    task_timeout_s: float = Field(
        60.0, gt=0, description="Limit of one handler run; a killed worker's job re-runs after this + 3 s"
    )
    task_max_tries: int = Field(3, ge=1, description="Runs of a failing task before it is reported failed")
    task_retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles per retry (max 30 s)")
    task_keep_result_s: float = Field(
        86_400.0, ge=0, description="How long arq keeps a job result (blocks re-enqueue of the same job id)"
    )
    relay_outbox: bool = Field(
        True, description="The orchestrator relays the outbox of its partitions to arq (else run sraq dispatcher)"
    )
    dispatcher_claim_idle_ms: int = Field(
        5000, ge=100, description="Outbox entries held this long by a dead relay are claimed by a live one"
    )
    demo_steps: int = Field(3, ge=1, description="Steps of the demo task handler")
    demo_step_s: float = Field(0.4, ge=0, description="Seconds per step of the demo task handler")
    task_llm_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL of the llm task handler (default: SRAQ_OPENAI_BASE_URL)"
    )
    task_llm_model: str | None = Field(None, description="Model of the llm task handler (default: SRAQ_OPENAI_MODEL)")
    task_llm_api_key: SecretStr | None = Field(
        None, description="API key of the llm task handler (default: SRAQ_OPENAI_API_KEY; never logged)"
    )
    task_llm_timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one llm handler request")

    # orchestrator loop (docs/orchestrator.md)
    instance_id: str | None = Field(None, description="Orchestrator instance id (default: host-pid-random)")
    lease_ms: int = Field(
        5000, ge=200, description="Partition lease and heartbeat lifetime; a dead instance's partitions move after it"
    )
    max_in_flight: int = Field(
        512, ge=1, description="Turns read but not yet committed, over all partitions (backpressure bound)"
    )
    snapshot_cache: int = Field(
        4096,
        ge=0,
        description="Conversations whose ledger snapshot stays in memory between turns (0: read every turn)",
    )
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        description="Garbage collector: allocations between young collections (Python's default 700; 0 keeps it)",
    )
    gc_freeze: bool = Field(True, description="Garbage collector: freeze what exists at start (model, modules)")
    read_batch: int = Field(128, ge=1, description="Entries per XREADGROUP call")
    read_block_ms: int = Field(500, ge=10, description="XREADGROUP BLOCK time (also bounds how fast reading stops)")
    max_deliveries: int = Field(5, ge=1, description="An entry delivered more times than this is dead-lettered")
    trim_turns: bool = Field(
        True, description="Trim processed (acknowledged) entries from the turn streams; the ledger keeps what they said"
    )
    conflict_retries: int = Field(3, ge=0, description="Re-reads and re-decisions after a ledger version conflict")
    decision_timeout_ms: int = Field(2000, ge=1, description="Deadline of one routing decision (model tiers included)")
    grace_s: float = Field(10.0, ge=0, description="Shutdown: time to finish in-flight turns before cancelling them")
    max_content_bytes: int = Field(16 * 1024, ge=1, description="Largest accepted turn content (UTF-8 bytes)")
    metrics_host: str = Field("0.0.0.0", description="Bind address of the /metrics and /health endpoint")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of /metrics and /health (0 disables them)")
    log_format: str = Field("auto", pattern="^(auto|json|console)$", description="Log format: auto, json or console")
    log_level: str = Field("info", description="Log level (debug, info, warning, error)")
    scripted_latency_ms: float = Field(
        0.0, ge=0, description="Simulated decision time of the scripted test/bench backend"
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "{} \n"):
            raise ValueError("prefix must be non-empty without braces or spaces")
        return v

    def keys(self) -> Keys:
        return Keys(prefix=self.prefix, partitions=self.partitions)

    def tiers(self) -> list[str]:
        return [t.strip() for t in self.intent_tiers.split(",") if t.strip()]
