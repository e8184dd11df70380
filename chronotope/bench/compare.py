"""`chronotope bench compare BASE NEW`: two generate-and-score runs on the prompts both ran, paired.

A checkpoint is worth shipping when it beats the published one on the same prompts. Two runs made with
the same --seed share their prompts (prompt i is scene seed + 1000 i), so each video of one has a twin in
the other: same prompt index, mode, steps and size (the size also follows the aspect-ratio and frame
lists). Per mode this gives the paired mean change with its standard error and how many prompts got better
or worse, which separates a real gain from prompt-to-prompt noise far better than two unpaired means. The
targets of both runs are recomputed on the shared prompts only, so a 100-prompt trial run can be held against
a published 200-prompt run.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

from chronotope.bench.generate_report import aggregate

CONFIG_KEYS = ("seed", "steps", "resolution", "sampler", "composition")  # must match for the prompts and videos to pair


def load_run(path: str | os.PathLike) -> dict:
    """A generate-and-score results.json (or the folder holding it)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"no generate-and-score results at {path}: give a results.json or the --out folder of a run")
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    if not isinstance(run, dict) or not isinstance(run.get("videos"), list) or not isinstance(run.get("config"), dict):
        raise ValueError(f"{path} is not a generate-and-score results.json (needs 'config' and 'videos')")
    return run


def _key(r: dict) -> tuple[int, str, int]:
    return r["index"], r["mode"], r["steps"]


def _overall(r: dict) -> float | None:
    value = r["scores"].get("overall")
    return None if value is None or not math.isfinite(value) else float(value)


def paired_change(base: list[float], new: list[float]) -> dict:
    """Mean of new - base with its standard error, and the counts of pairs that rose / fell."""
    if len(base) != len(new):
        raise ValueError(f"paired_change needs equal-length lists, got {len(base)} and {len(new)}")
    diffs = [b - a for a, b in zip(base, new)]
    n = len(diffs)
    mean = sum(diffs) / n if n else float("nan")
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else float("nan")
    return {"pairs": n, "base": sum(base) / n if n else float("nan"), "new": sum(new) / n if n else float("nan"),
            "change": mean, "stderr": se, "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}


def _size(r: dict) -> tuple[int, int, int]:
    return r["height"], r["width"], r["num_frames"]


def compare_runs(base: dict, new: dict, any_size: bool = False, any_sampling: bool = False) -> dict:
    """Per mode: paired overall change at the runs' sampling steps; targets of both on the shared prompts.

    Twins must also share their size (height, width, frames): runs with other --aspect-ratios,
    --untrained-aspect-ratios or --num-frames give prompt i another size, and those pairs are left out
    (counted in "other_size") unless any_size pairs them by scene alone.
    any_sampling: pair each video at the base run's steps with its twin at the new run's, whatever the two runs'
    steps and samplers (a few-step model at 4 steps against its teacher at 20 with CFG).
    """
    if any_sampling:  # the base run's main videos stand in at the new run's steps
        base = {**base, "config": {**base["config"], "steps": new["config"]["steps"], "sampler": new["config"]["sampler"]},
                "videos": [{**r, "steps": new["config"]["steps"]} for r in base["videos"]
                           if r["steps"] == base["config"]["steps"]]}
    for key in CONFIG_KEYS:
        if base["config"].get(key) != new["config"].get(key):
            raise ValueError(f"the runs differ in {key} ({base['config'].get(key)!r} vs {new['config'].get(key)!r}), "
                             f"so their videos are not of the same prompts and settings; compare runs made with the "
                             f"same --seed, --steps, --resolution, --sampler and --composition")
    versions = [run["config"].get("scorer", 1) for run in (base, new)]  # runs from before versions: 1
    if versions[0] != versions[1]:
        raise ValueError(f"the runs were scored by World-bench scorer {versions[0]} and {versions[1]}: their scores do not "
                         f"pair; run `chronotope bench generate-and-score` again for the older one: its videos are "
                         f"made and scored anew")
    twins = {_key(r): r for r in base["videos"]}
    pairs = [(twins[_key(r)], r) for r in new["videos"] if _key(r) in twins]
    other_size = sum(_size(a) != _size(b) for a, b in pairs)
    if not any_size:
        pairs = [(a, b) for a, b in pairs if _size(a) == _size(b)]
    clash = [_key(b) for a, b in pairs if a["scene_seed"] != b["scene_seed"]]
    if clash:
        raise ValueError(f"prompt {clash[0][0]} has scene seed {twins[clash[0]]['scene_seed']} in one run and another in "
                         f"the other; the runs do not share prompts")
    steps = new["config"]["steps"]
    modes = [m for m in new["config"]["modes"] if m in base["config"]["modes"]]
    if not any(r["steps"] == steps for _, r in pairs):
        raise ValueError(f"the runs share no video of the same prompt, mode, steps and size ({other_size} twins were "
                         f"made at another size: --any-size pairs them by scene alone)")

    per_mode = {}
    for mode in modes:
        both = [(_overall(a), _overall(b)) for a, b in pairs if b["mode"] == mode and b["steps"] == steps]
        both = [(a, b) for a, b in both if a is not None and b is not None]
        if both:
            per_mode[mode] = paired_change([a for a, _ in both], [b for _, b in both])

    cfg = SimpleNamespace(**{**new["config"], "modes": modes,
                             "steps_table": sorted(set(base["config"].get("steps_table") or [])
                                                   & set(new["config"].get("steps_table") or [])),
                             "steps_table_prompts": min(base["config"].get("steps_table_prompts", 0),
                                                        new["config"].get("steps_table_prompts", 0))})
    summaries = [aggregate([pair[i] for pair in pairs], cfg) for i in (0, 1)]
    targets = [{**t_new, "base": t_base["value"]} for t_base, t_new in zip(summaries[0]["targets"], summaries[1]["targets"])]
    prompts = len({r["index"] for _, r in pairs})
    return {"prompts": prompts, "steps": steps, "other_size": other_size, "any_size": any_size, "modes": per_mode,
            "targets": targets}


def compare_markdown(result: dict, base_name: str, new_name: str) -> str:
    """The comparison as two markdown tables (modes, targets)."""
    def f(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"

    sizes = (f"{result['other_size']} twins made at another size " +
             ("paired by scene alone" if result["any_size"] else "left out (--any-size pairs them)"))
    lines = [f"# {new_name} vs {base_name}: {result['prompts']} shared prompts, {result['steps']} steps", "",
             f"Each video is paired with its twin in the other run: same prompt, mode, steps and size; {sizes}.", "",
             "| mode | pairs | base | new | paired change ± s.e. | better / worse |", "|---|---:|---:|---:|---|---|"]
    for mode, m in result["modes"].items():
        lines.append(f"| {mode} | {m['pairs']} | {f(m['base'])} | {f(m['new'])} | {m['change']:+.3f} ± {f(m['stderr'])} | "
                     f"{m['better']} / {m['worse']} |")
    lines += ["", "| target | base | new | goal |", "|---|---:|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['label']} | {f(t['base'])} | {f(t['value'])} | {t['op']} {t['target']:g} |")
    return "\n".join(lines) + "\n"
