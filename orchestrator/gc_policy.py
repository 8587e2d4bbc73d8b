"""The garbage collector's settings for a long-running orchestrator process.

CPython's cyclic collector runs a young collection every 700 net allocations of tracked objects and,
now and then, a full one over every tracked object. An orchestrator allocates a few hundred objects
per turn and keeps a large, long-lived heap (the embedded model's vocabularies and caches, the
snapshot cache, imported modules), so with the defaults it spent ~9% of its CPU in the collector
during ``sraq bench loop`` and paused the event loop for 65–105 ms at each full collection, which
showed up directly as the p99 of turn latency. Almost nothing it allocates forms reference cycles
(reference counting frees it), so:

* ``gc.freeze()`` once everything is loaded: the objects that exist then (the model, its tables,
  modules) move to a permanent generation that no collection scans again;
* a larger young-generation threshold (``SRAQ_GC_GEN0_THRESHOLD``, default 10,000): ~15x fewer
  young collections; each scans more objects (a few milliseconds), and full collections become rare;
* the scalar-only structs the caches hold (``Message``, ``Task``, ``Turn``, ``ChatMessage``,
  ``TaskInfo``) are not tracked at all (``gc=False``).

Applied by the entry points that run an orchestrator (``sraq orchestrator``, ``sraq bench loop``), never
on import: the collector is process-wide state, and tests run many orchestrators in one process.
"""

from __future__ import annotations

import gc

from orchestrator.settings import Settings

#: Middle and old generation thresholds used with a custom young threshold: a middle collection every
#: 20 young ones, a full one at most every 100 middle ones (CPython also waits until the objects that
#: survived into the old generation since the last full collection reach 25% of it).
_GEN1, _GEN2 = 20, 100


def apply_gc_policy(settings: Settings) -> tuple[int, int, int]:
    """Apply ``settings``' collector policy to this process; call once, after the backend is loaded.

    Returns the thresholds now in effect.
    """
    if settings.gc_gen0_threshold > 0:
        gc.set_threshold(settings.gc_gen0_threshold, _GEN1, _GEN2)
    if settings.gc_freeze:
        gc.collect()  # what is garbage now is not frozen with the rest
        gc.freeze()
    return gc.get_threshold()
