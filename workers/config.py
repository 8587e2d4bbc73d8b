"""Configuration of the worker side (pool, relay, handlers), built by the entry point from ``Settings``.

``workers/`` never imports ``orchestrator/``: the CLI turns its ``Settings`` into a :class:`WorkerConfig`
and passes it down explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger import Keys

#: arq's hard job timeout is this much longer than our own per-run timeout, so ours always fires first
#: (it is the one that turns a slow handler into a retry / ``failed`` event).
JOB_TIMEOUT_MARGIN_S = 2.0
#: The in-progress key outlives the arq job timeout by this much (arq's own margin is 10 s).
IN_PROGRESS_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Every knob of ``sraq workers`` and ``sraq dispatcher``. Build once, pass explicitly."""

    redis_url: str = "redis://localhost:6379/0"
    prefix: str = "sraq"
    partitions: int = 16
    #: handler run for every task: a registered name (``demo``, ``llm``, entry points) or ``module:function``
    handler: str = "demo"
    #: extra registrations ``name=module:function`` (settings path), on top of the ``sraq.handlers`` entry points
    handler_paths: tuple[str, ...] = ()
    max_jobs: int = 20
    poll_delay_s: float = 0.02
    task_timeout_s: float = 60.0
    max_tries: int = 3
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    shutdown_grace_s: float = 10.0
    health_check_interval_s: float = 10.0
    #: arq keeps a finished job's result this long; while it exists the job id cannot be enqueued again
    keep_result_s: float = 86_400.0
    max_content_bytes: int = 16 * 1024
    # relay
    dispatcher_block_ms: int = 1000
    dispatcher_claim_idle_ms: int = 5000
    # handlers
    demo_steps: int = 3
    demo_step_s: float = 0.4
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = field(default=None, repr=False)
    llm_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        if not 0.001 <= self.poll_delay_s <= 5:
            raise ValueError("poll_delay_s must be in 0.001..5")
        if self.task_timeout_s <= 0:
            raise ValueError("task_timeout_s must be > 0")
        if self.max_tries < 1:
            raise ValueError("max_tries must be >= 1")

    def keys(self) -> Keys:
        return Keys(prefix=self.prefix, partitions=self.partitions)

    @property
    def job_timeout_s(self) -> float:
        """arq's hard timeout of one run (our own ``task_timeout_s`` fires first)."""
        return self.task_timeout_s + JOB_TIMEOUT_MARGIN_S

    @property
    def in_progress_s(self) -> float:
        """How long a job id stays claimed after its worker died: a SIGKILLed job re-runs after this."""
        return self.job_timeout_s + IN_PROGRESS_MARGIN_S

    def backoff_s(self, job_try: int) -> float:
        """Delay before run ``job_try + 1`` after run ``job_try`` failed (exponential, capped)."""
        return float(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, job_try - 1)))
