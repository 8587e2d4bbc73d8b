"""PNG plots of an evaluation (confusion matrix, reliability diagram, latency CDF).

matplotlib is an optional extra (``pip install 'sraq[plot]'``); :func:`available` says whether it is
installed so the CLI can skip plotting with a clear message instead of failing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intent.evaluation import ECE_BINS, RowResult


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plots(rows: Sequence[RowResult], rep: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    """Write the three PNGs into ``out_dir``; returns their paths. Requires matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    labels = list(rep["confusion"])
    cols = labels + sorted({p for row in rep["confusion"].values() for p in row} - set(labels))
    grid = [[rep["confusion"][t].get(p, 0) for p in cols] for t in labels]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    im = ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < max(map(max, grid)) / 2 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("expected")
    ax.set_title(f"{title}: confusion (macro-F1 {rep['macro_f1']:.3f})")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "confusion.png"))

    conf = [r.confidence if r.valid else 0.0 for r in rows]
    correct = [r.correct for r in rows]
    centers, accs, counts = [], [], []
    for b in range(ECE_BINS):
        idx = [i for i, c in enumerate(conf) if min(ECE_BINS - 1, int(c * ECE_BINS)) == b]
        if idx:
            centers.append((b + 0.5) / ECE_BINS)
            accs.append(sum(correct[i] for i in idx) / len(idx))
            counts.append(len(idx))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(centers, accs, width=1 / ECE_BINS * 0.9, alpha=0.7, label="accuracy per bin")
    for x, y, n in zip(centers, accs, counts, strict=True):
        ax.text(x, y + 0.02, str(n), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: reliability (ECE {rep['ece']:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "reliability.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    lat = sorted(r.latency_ms for r in rows)
    if lat:
        ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))])
    ax.set_xscale("log")
    ax.set_xlabel("decide latency (ms, log)")
    ax.set_ylabel("share of turns")
    ax.set_title(f"{title}: latency CDF (p99 {rep['latency_ms']['p99']:.3f} ms)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "latency_cdf.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
