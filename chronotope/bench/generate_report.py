"""The proof of generate-and-score: aggregates per mode and group, the issue's targets (PASS / MISS),
OUT/results.json, OUT/report.md, OUT/grid.gif (sample videos, prompts listed in the report) and plots.

Targets ("The shipped World model and the proof"): t2v overall >= 0.85, color >= 0.95, shape >= 0.90,
motion >= 0.80 (seen compositions); held-out overall >= 0.75; untrained aspect ratios >= 0.8x trained;
long video last / first quarter >= 0.8 (also shown relative to ground truth, whose movers leave
the frame); loop closure <= 1.5; i2v / extend PSNR >= 30 dB.
"""

from __future__ import annotations

import json
import os

import numpy as np

from chronotope.atomic import atomic_write, atomic_write_text
from chronotope.bench.run import summarise
from chronotope.bench.score import ATTRIBUTES

COLUMNS = ("overall",) + ATTRIBUTES
# (key, label, value path in the summary, comparison, threshold)
TARGETS: tuple[tuple[str, str, tuple[str, ...], str, float], ...] = (
    ("t2v_overall", "t2v overall (seen)", ("t2v", "groups", "seen", "overall"), ">=", 0.85),
    ("t2v_color", "t2v color (seen)", ("t2v", "groups", "seen", "color"), ">=", 0.95),
    ("t2v_shape", "t2v shape (seen)", ("t2v", "groups", "seen", "shape"), ">=", 0.90),
    ("t2v_motion", "t2v motion (seen)", ("t2v", "groups", "seen", "motion"), ">=", 0.80),
    ("heldout_overall", "t2v overall (held-out compositions)", ("t2v", "groups", "heldout", "overall"), ">=", 0.75),
    ("untrained_ar", "t2v overall untrained / trained aspect ratios", ("t2v", "untrained_over_trained"), ">=", 0.8),
    ("long_ratio", "long: last / first quarter overall", ("long", "last_over_first"), ">=", 0.8),
    ("long_vs_gt", "long: last / first, relative to the same scenes' ground truth", ("long", "relative_to_gt"), ">=",
     0.8),
    ("loop_closure", "loop closure ratio (wrap step / mean step)", ("loop", "ratio"), "<=", 1.5),
    ("i2v_psnr", "i2v first frame vs given image, PSNR dB", ("i2v", "psnr_first"), ">=", 30.0),
    ("extend_psnr", "extend given frames (window decode) PSNR dB", ("extend", "psnr_given"), ">=", 30.0),
)


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _get(d: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ceilings(per_video: list[dict | None]) -> dict:
    """Mean ground-truth and VAE-reconstruction scores of the t2v prompts (bench.generate.ceilings)."""
    found = [c for c in per_video if c]
    out = {name: {a: _mean([c[name].get(a) for c in found if name in c]) for a in COLUMNS}
           for name in ("ground_truth", "vae_reconstruction")}
    out["videos"] = len(found)
    out["vae_psnr"] = _mean([c.get("vae_psnr") for c in found])
    return out


def aggregate(records: list[dict], cfg) -> dict:
    """Summary of every record: per mode (at cfg.steps) all / seen / held-out, t2v also by aspect-ratio
    group, each mode's own measures, the steps table, and the targets with PASS / MISS / n/a."""
    main = [r for r in records if r["steps"] == cfg.steps]
    out: dict = {"modes": {}}
    for mode in cfg.modes:
        rows = [r for r in main if r["mode"] == mode]
        out["modes"][mode] = summarise(rows)
    t2v = [r for r in main if r["mode"] == "t2v"]
    groups = summarise(t2v)
    groups["trained_ar"] = summarise([r for r in t2v if r["trained_ar"]])["all"]
    groups["untrained_ar"] = summarise([r for r in t2v if not r["trained_ar"]])["all"]
    out["t2v"] = {"groups": groups,
                  "untrained_over_trained": _ratio(groups["untrained_ar"]["overall"], groups["trained_ar"]["overall"]),
                  "ceilings": _ceilings([r["metrics"].get("ceilings") for r in t2v])}

    def metric(mode: str, key: str) -> list:
        return [r["metrics"].get(key) for r in main if r["mode"] == mode]

    out["i2v"] = {"psnr_first": _mean(metric("i2v", "psnr_first"))}
    out["extend"] = {"psnr_given": _mean(metric("extend", "psnr_given")), "psnr_kept": _mean(metric("extend", "psnr_kept")),
                     "seam_ratio": _mean(metric("extend", "seam_ratio"))}
    out["connect"] = {"seam_ratio": _mean(metric("connect", "seam_ratio")),
                      "psnr_middle_vs_gt": _mean(metric("connect", "psnr_middle_vs_gt"))}
    ratios = [v for v in metric("loop", "ratio") if v is not None]
    out["loop"] = {"ratio": _mean(ratios), "share_at_most_1.5": _mean([float(v <= 1.5) for v in ratios])}
    longs = [r["metrics"] for r in main if r["mode"] == "long"]
    long_out: dict = {}
    for part in ("first", "last", "gt_first", "gt_last"):
        long_out[part] = {a: _mean([m[part].get(a) for m in longs]) for a in COLUMNS}
    long_out["last_over_first"] = _ratio(long_out["last"]["overall"], long_out["first"]["overall"])
    long_out["gt_last_over_first"] = _ratio(long_out["gt_last"]["overall"], long_out["gt_first"]["overall"])
    long_out["relative_to_gt"] = _ratio(long_out["last_over_first"], long_out["gt_last_over_first"])
    out["long"] = long_out

    table = []
    for s in sorted(set(cfg.steps_table)):
        rows = [r for r in records if r["mode"] == "t2v" and r["steps"] == s and r["index"] < cfg.steps_table_prompts]
        table.append({"steps": s, "videos": len(rows), "overall": _mean([r["scores"]["overall"] for r in rows]),
                      "seconds_per_video": _mean([r["seconds"] for r in rows])})
    out["steps_table"] = table

    targets = []
    for key, label, path, op, threshold in TARGETS:
        value = _get(out, path)
        status = "n/a" if value is None else ("PASS" if (value >= threshold if op == ">=" else value <= threshold)
                                              else "MISS")
        targets.append({"key": key, "label": label, "value": value, "op": op, "target": threshold, "status": status})
    out["targets"] = targets
    return out


def _steps_rows(summary: dict) -> list[dict]:
    """The steps table's rows that have videos (none when the run had --steps-table '')."""
    return [r for r in summary["steps_table"] if r["videos"]]


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _row(name: str, row: dict) -> str:
    return f"| {name} | {row['videos']} | " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |"


def report_markdown(result: dict, grid_prompts: list[str]) -> str:
    """The report: settings, targets, t2v by group, every mode, mode measures, steps table, samples, plots."""
    cfg, s = result["config"], result["summary"]
    head = "| set | videos | " + " | ".join(COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    which = (f"every one with a {' '.join(cfg['composition'])}" if cfg.get("composition")
             else f"{cfg['heldout_fraction']:.0%} held-out compositions")
    adapters = "".join(f" + LoRA `{a['path']}` x{a['scale']:g}" for a in cfg.get("lora") or [])
    lines = ["# World-bench: generate and score", "",
             f"Model `{cfg['model'] or '(in memory)'}`{adapters}; {cfg['num']} fresh World prompts (scene seeds from "
             f"{cfg['seed']}, never training data; {which}), "
             f"detailed captions; {cfg['resolution']}, trained aspect ratios {', '.join(cfg['aspect_ratios'])}, "
             f"untrained {', '.join(cfg['untrained_aspect_ratios']) or 'none'}; frames "
             f"{', '.join(map(str, cfg['num_frames']))}; {cfg['sampler']}, {cfg['steps']} steps, guidance "
             f"{cfg['guidance_scale']:g}.", "",
             "## Targets", "", "| metric | value | target | status |", "|---|---:|---:|---|"]
    for t in s["targets"]:
        lines.append(f"| {t['label']} | {_fmt(t['value'])} | {t['op']} {t['target']:g} | {t['status']} |")
    g = s["t2v"]["groups"]
    lines += ["", "## Text-to-video by group", "", head, rule]
    for key, name in (("all", "all"), ("seen", "seen"), ("heldout", "held-out"), ("trained_ar", "trained AR"),
                      ("untrained_ar", "untrained AR")):
        lines.append(_row(name, g[key]))
    lines += ["", f"Untrained / trained aspect ratios (overall): {_fmt(s['t2v']['untrained_over_trained'])}."]
    c = s["t2v"]["ceilings"]
    if c["videos"]:
        vae = c["vae_psnr"] is not None
        lines += ["", "Ceilings, on the same t2v prompts: the scenes' ground-truth renders"
                  + (f", and those renders through the model's VAE (encode, decode; {_fmt(c['vae_psnr'], 2)} dB): the "
                     "most a DiT can reach with this VAE. The gap between the VAE row and the generated one is the "
                     "DiT's, the gap above it the VAE's." if vae else "."), "", head, rule,
                  _row("ground-truth render", {**c["ground_truth"], "videos": c["videos"]})]
        if vae:
            lines.append(_row("ground truth through the VAE", {**c["vae_reconstruction"], "videos": c["videos"]}))
        lines.append(_row("generated", g["all"]))
    lines += ["", "## Every mode (all prompts)", "", head.replace("| set |", "| mode |"), rule]
    for mode, groups in s["modes"].items():
        lines.append(_row(mode, groups["all"]))
    lines += ["", "Held-out compositions per mode (overall): " + ", ".join(
        f"{m} {_fmt(gr['heldout']['overall'])} (n={gr['heldout']['videos']})" for m, gr in s["modes"].items()) + ".",
        "", "## Mode measures", "", "| mode | measure | value |", "|---|---|---:|",
        f"| i2v | first frame vs given image, PSNR dB | {_fmt(s['i2v']['psnr_first'], 2)} |",
        f"| extend | given frames as the window decodes them, PSNR dB | {_fmt(s['extend']['psnr_given'], 2)} |",
        f"| extend | given frames kept in the output, PSNR dB (cap {100:g} = exact) | {_fmt(s['extend']['psnr_kept'], 2)} |",
        f"| extend | seam step / mean step | {_fmt(s['extend']['seam_ratio'])} |",
        f"| connect | seam step / mean step | {_fmt(s['connect']['seam_ratio'])} |",
        f"| connect | generated middle vs ground truth, PSNR dB | {_fmt(s['connect']['psnr_middle_vs_gt'], 2)} |",
        f"| loop | closure ratio (mean) | {_fmt(s['loop']['ratio'])} |",
        f"| loop | share of loops with ratio <= 1.5 | {_fmt(s['loop']['share_at_most_1.5'])} |",
        f"| long | first quarter overall | {_fmt(s['long']['first']['overall'])} |",
        f"| long | last quarter overall | {_fmt(s['long']['last']['overall'])} |",
        f"| long | last / first | {_fmt(s['long']['last_over_first'])} |",
        f"| long | ground-truth render: last / first (the ceiling: movers leave the frame) | "
        f"{_fmt(s['long']['gt_last_over_first'])} |",
        f"| long | last / first relative to the ground truth's | {_fmt(s['long']['relative_to_gt'])} |"]
    steps_rows = _steps_rows(s)
    if steps_rows:  # --steps-table '' runs none: no empty section, no plot
        lines += ["", "## Sampling steps (t2v)", "", "| steps | videos | overall | seconds / video |", "|---:|---:|---:|---:|"]
        lines += [f"| {row['steps']} | {row['videos']} | {_fmt(row['overall'])} | {_fmt(row['seconds_per_video'], 2)} |"
                  for row in steps_rows]
    lines += ["", "![per attribute](per_attribute.png)", ""] + (["![steps](steps.png)", ""] if steps_rows else [])
    if grid_prompts:
        lines += ["## Samples", "", "![samples](grid.gif)", "", "Row-major, 4 per row:", ""]
        lines += [f"{i + 1}. {p}" for i, p in enumerate(grid_prompts)]
        lines.append("")
    lines += ["Scores in [0, 1] (World-bench, `chronotope/bench/score.py`), computed on the generated frames "
              "before video encoding; `chronotope bench run OUT/videos --out DIR` re-scores the saved files "
              "(H.264 may shift a few values). Motion, consistency, flicker and permanence are not scored on "
              "images (t2i). Seconds per video are wall time on this machine, including CFG's two passes. "
              "Long videos: objects that move left/right/up/down leave the frame within 4 clip lengths, so even "
              "ground-truth renders lose score in the last quarter (the ground-truth row above); the relative "
              "row divides that ceiling out.",
              f"This run: {result['generated']} videos generated, {result['skipped']} reused from an earlier run."]
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: str) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))


def write_plots(summary: dict, out: str) -> list[str]:
    """OUT/per_attribute.png (t2v groups per attribute) and, when a steps table ran, OUT/steps.png (score and time against steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = summary["t2v"]["groups"]
    names = [("seen", "seen"), ("heldout", "held-out"), ("untrained_ar", "untrained AR")]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = np.arange(len(COLUMNS))
    for i, (key, label) in enumerate(names):
        vals = [np.nan if g[key].get(c) is None else g[key][c] for c in COLUMNS]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=f"{label} (n={g[key]['videos']})")
    ax.set_xticks(x, COLUMNS, rotation=30)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("World-bench score")
    ax.set_title("text-to-video, per attribute")
    ax.legend(fontsize=8)
    paths = [os.path.join(out, "per_attribute.png")]
    _save_figure(fig, paths[0])
    plt.close(fig)

    rows = _steps_rows(summary)
    if not rows:  # no steps table was run: no steps.png
        return paths
    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = [r["steps"] for r in rows]
    ax.plot(steps, [np.nan if r["overall"] is None else r["overall"] for r in rows], "o-", label="overall")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("overall score")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["seconds_per_video"] for r in rows], "s--", color="tab:orange", label="seconds / video")
    ax2.set_ylabel("seconds / video")
    ax2.set_ylim(bottom=0)
    ax.set_xticks(steps)
    ax.set_title("t2v: quality and time against steps")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    paths.append(os.path.join(out, "steps.png"))
    _save_figure(fig, paths[1])
    plt.close(fig)
    return paths


def write_grid(result: dict, out: str, count: int) -> list[str]:
    """OUT/grid.gif from the first `count` t2v videos (or of the first mode run); returns their prompts."""
    from chronotope.video import grid, read_video, write_video

    steps = result["config"]["steps"]
    rows = [r for r in result["videos"] if r["steps"] == steps]
    first = "t2v" if any(r["mode"] == "t2v" for r in rows) else (rows[0]["mode"] if rows else None)
    chosen = [r for r in rows if r["mode"] == first][:count]
    if not chosen:
        return []
    videos = [read_video(os.path.join(out, r["path"]))[0] for r in chosen]
    write_video(os.path.join(out, "grid.gif"), grid(videos), fps=result["config"]["fps"])
    return [f"`{r['mode']}` {r['width']}x{r['height']}, {r['num_frames']} frames: {r['prompt']}" for r in chosen]


def write_outputs(result: dict, cfg) -> None:
    """results.json, grid.gif, plots, report.md under cfg.out (each written atomically)."""
    atomic_write_text(os.path.join(cfg.out, "results.json"), json.dumps(result, indent=1))
    prompts = write_grid(result, cfg.out, cfg.grid_videos)
    write_plots(result["summary"], cfg.out)
    atomic_write_text(os.path.join(cfg.out, "report.md"), report_markdown(result, prompts))


__all__ = ["TARGETS", "aggregate", "report_markdown", "write_grid", "write_outputs", "write_plots"]
