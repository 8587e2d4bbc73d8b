"""Temperature scaling: one scalar T fitted on held-out decisions, stored with a backend's config.

A model's renormalised action probabilities ``p`` are mapped to ``softmax(log p / T)``. T > 1 softens
an over-confident model, T < 1 sharpens an under-confident one; the ranking (and so the decision)
never changes, only the confidence the router compares with its thresholds. T is fitted by
minimising the negative log-likelihood of the correct action on held-out rows (NLL is convex in
1/T, so a bounded golden-section search on log T finds the optimum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import numpy as np

_FLOOR = 1e-12


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """A fitted temperature and the evidence for it (stored as JSON next to the backend config)."""

    temperature: float = 1.0
    samples: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def apply(self, probs: Mapping[str, float]) -> dict[str, float]:
        """Temperature-scale a distribution over actions (keys kept, values renormalised)."""
        return scale(probs, self.temperature)

    def dump(self, path: str | Path) -> None:
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(self)) + b"\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return msgspec.json.decode(Path(path).read_bytes(), type=cls)


def scale(probs: Mapping[str, float], temperature: float) -> dict[str, float]:
    """``softmax(log p / T)`` over the keys of ``probs``."""
    if not probs:
        return {}
    if temperature == 1.0:
        total = sum(probs.values())
        return {k: v / total for k, v in probs.items()} if total > 0 else dict(probs)
    logits = {k: math.log(max(v, _FLOOR)) / temperature for k, v in probs.items()}
    top = max(logits.values())
    exps = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exps.values())
    return {k: v / total for k, v in exps.items()}


def _scaled_matrix(probs: np.ndarray, temperature: float) -> np.ndarray:
    import numpy as np

    logits = np.log(np.clip(probs, _FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exps = np.exp(logits)
    out: np.ndarray = exps / exps.sum(axis=1, keepdims=True)
    return out


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    import numpy as np

    scaled = _scaled_matrix(probs, temperature)
    picked = scaled[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _FLOOR, 1.0))))


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error with equal-width bins."""
    import numpy as np

    if not confidences:
        return 0.0
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += float(mask.sum()) / len(conf) * abs(float(conf[mask].mean()) - float(hit[mask].mean()))
    return total


def fit_temperature(
    rows: Sequence[tuple[Sequence[float], int]], lo: float = 0.05, hi: float = 20.0, iterations: int = 80
) -> Calibration:
    """Fit T on held-out ``(probabilities over the allowed actions, index of the correct action)`` rows.

    Rows may have different lengths (the allowed actions depend on the ledger); each is padded with
    zeros, which stay (near) zero under any temperature.
    """
    import numpy as np  # numpy costs ~0.4 s to import: only fitting needs it

    if not rows:
        return Calibration()
    width = max(len(p) for p, _ in rows)
    probs = np.zeros((len(rows), width))
    for i, (p, _) in enumerate(rows):
        probs[i, : len(p)] = p
    labels = np.asarray([y for _, y in rows], dtype=int)
    if (labels < 0).any() or (labels >= width).any():
        raise ValueError("label index out of range")
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(probs, labels, math.exp(c)), _nll(probs, labels, math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(probs, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(probs, labels, math.exp(d))
    t = math.exp((a + b) / 2)

    def _ece(temp: float) -> float:
        scaled = _scaled_matrix(probs, temp)
        pred = scaled.argmax(axis=1)
        return ece(scaled.max(axis=1).tolist(), (pred == labels).tolist())

    return Calibration(
        temperature=round(t, 6),
        samples=len(rows),
        nll_before=round(_nll(probs, labels, 1.0), 6),
        nll_after=round(_nll(probs, labels, t), 6),
        ece_before=round(_ece(1.0), 6),
        ece_after=round(_ece(t), 6),
    )
