"""The one settings object, built at the entry point from ``SRAQ_*`` environment variables and flags."""

from __future__ import annotations

from typing import Literal

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
