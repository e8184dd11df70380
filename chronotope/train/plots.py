"""Training curves: loss, gradient norm, learning rate and throughput from `metrics.jsonl`, as one PNG.

Uses matplotlib's Agg backend (no display needed) and writes atomically (temp file + os.replace),
so a viewer never sees a half-written image. `redraw(run_dir)` rebuilds the plot from the log.

    python -m chronotope.train.plots RUN_DIR      # writes RUN_DIR/metrics.png
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from chronotope.atomic import atomic_write


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a `metrics.jsonl` (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc, buf = [], 0.0, []
    for v in values:
        buf.append(v)
        acc += v
        if len(buf) > window:
            acc -= buf.pop(0)
        out.append(acc / len(buf))
    return out


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Draw loss (log scale, raw + moving average), grad norm, lr and throughput into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [r for r in records if "step" in r]
    steps = [r["step"] for r in rows]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    x, y = series("loss")
    if y:
        ax.plot(x, y, color="tab:blue", alpha=0.35, lw=0.8, label="loss")
        ax.plot(x, _smooth(y, max(1, len(y) // 20)), color="tab:blue", lw=1.6, label="moving avg")
        if min(y) > 0 and max(y) / min(y) > 20:  # log scale only when the loss spans decades
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_title("loss")
    for ax, key, label in (
        (axes[0, 1], "grad_norm", "grad norm (before clipping)"),
        (axes[1, 0], "lr", "learning rate"),
        (axes[1, 1], "throughput", "throughput (" + str(rows[-1].get("throughput_unit", "items") if rows else "items") + "/s)"),
    ):
        x, y = series(key)
        if y:
            ax.plot(x, y, lw=1.0)
        ax.set_title(label)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    skipped = rows[-1].get("skipped_total", 0) if rows else 0
    fig.suptitle(f"{title}  steps {steps[0] if steps else 0}-{steps[-1] if steps else 0}, skipped steps {skipped}".strip())
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), fsync=False)
    finally:
        plt.close(fig)
    return path


def redraw(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rebuild `RUN_DIR/metrics.png` (or `out`) from `RUN_DIR/metrics.jsonl`."""
    run_dir = Path(run_dir)
    log = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not log.is_file():
        raise FileNotFoundError(f"no metrics log at {log}; pass a run folder that holds metrics.jsonl")
    return plot_metrics(read_metrics(log), out or log.with_name("metrics.png"), title=log.parent.name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m chronotope.train.plots RUN_DIR")
    print(redraw(sys.argv[1]))
