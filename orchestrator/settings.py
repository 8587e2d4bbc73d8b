"""The one settings object, built at the entry point from ``SRAQ_*`` environment variables and flags."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger import Keys


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
    sglang_url: str = Field("http://localhost:30000", description="SGLang server for the student tier")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible base URL for the teacher tier")
    openai_model: str | None = Field(None, description="Teacher model name")
    openai_api_key: SecretStr | None = Field(None, description="Teacher API key (never logged)")

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
