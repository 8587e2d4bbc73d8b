"""Configuration of the stand-in SGLang server: latency model and fault injection (see stub_server)."""

from __future__ import annotations

import math
import random
from typing import Literal

import msgspec


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request latency: ``fixed`` (a ms), ``uniform`` (a..b ms) or ``lognormal`` (median a ms, sigma b)."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    a: float = 150.0
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """``150`` · ``uniform:2000:12000`` · ``lognormal:150:0.3``."""
        parts = spec.split(":")
        try:
            if len(parts) == 1:
                return cls(kind="fixed", a=float(parts[0]))
            if parts[0] in ("uniform", "lognormal") and len(parts) == 3:
                return cls(kind=parts[0], a=float(parts[1]), b=float(parts[2]))  # type: ignore[arg-type]
        except ValueError:
            pass
        raise ValueError(f"bad latency spec {spec!r}: use 150, uniform:2000:12000 or lognormal:150:0.3")

    def sample(self, rng: random.Random) -> float:
        """Seconds."""
        match self.kind:
            case "fixed":
                ms = self.a
            case "uniform":
                ms = rng.uniform(self.a, self.b)
            case _:
                ms = self.a * math.exp(rng.gauss(0.0, self.b))
        return max(ms, 0.0) / 1000


class StubConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Behaviour of one stand-in server."""

    model_path: str = "sraq/stub-gpt-oss"
    latency: Latency = msgspec.field(default_factory=Latency)
    error_rate: float = 0.0  # HTTP 500
    timeout_rate: float = 0.0  # hang (the client's deadline fires)
    malformed_rate: float = 0.0  # output that violates the grammar / does not parse
    low_confidence_rate: float = 0.0  # same decision, top probability ~0.45
    chat_logprobs: Literal["yes", "null", "reject"] = "yes"  # what /v1/chat/completions does with logprobs
    brain: Literal["keywords", "embedded"] = "keywords"  # keyword rules, or the embedded CPU tier
    incremental_streaming: bool = False  # like SGLang's --incremental-streaming-output (delta chunks)
    hang_s: float = 3600.0
    seed: int = 0
