"""World-bench storyboard mode: a multi-shot video scored shot by shot, across shots, and at its cuts.

A storyboard is a list of shots, each {"spec", "num_frames"} (and "start", else the shots run back to back).
Four metrics in [0, 1], each a mean over the storyboard's shots, characters or cuts:

    adherence  each shot's frames scored against its own spec (bench.score.score_video), mean of `overall`
    identity   per character (a color named in two or more shots; world.storyboard.characters) and per later
               shot naming it: 1 when it is seen in both that shot and its first one with the same shape (their
               per-frame shape votes overlap by SHAPE_OVERLAP) and the same size class (median extent on the
               same side of score.SIZE_SPLIT), else 0: measured in the frames, whatever the specs say
    cuts       per requested cut: 1 when the cut detected from the frames lies within +-CUT_TOLERANCE frames
    no_bleed   per shot: the fraction of its frames showing no object of a color that its spec does not name

Cuts are found in the pixels, never in metadata: the mean absolute change between consecutive frames peaks
at a hard cut (a World cut changes the background and re-places every object). Around each requested cut the
largest change within half the shorter neighbouring shot is the detected cut when it stands out (at least
CUT_MIN levels and CUT_RATIO times the median change there); else that cut is missed. Adherence and bleed
leave out the one frame on either side of each requested cut, so a cut one frame late, which `cuts` accepts,
costs nothing twice.

    scores = score_storyboard(frames, shots)      # {"adherence", "identity", "cuts", "no_bleed", "shots", ...}
    chronotope bench storyboard data/boards --out bench_boards    # World storyboards or generated films
"""

from __future__ import annotations

import json
import os

import numpy as np

from chronotope.bench.detect import Detections, detect
from chronotope.bench.palette import COLOR_NAMES
from chronotope.bench.score import SIZE_SPLIT, _Track, check_frames, check_spec, score_video
from chronotope.world.storyboard import characters
from chronotope.world.vocab import SHAPES

METRICS: tuple[str, ...] = ("adherence", "identity", "cuts", "no_bleed")
CUT_TOLERANCE = 1  # frames
CUT_MIN = 3.0  # uint8 levels of mean absolute change: below this no frame pair is a cut
CUT_RATIO = 3.0  # a cut's change is at least this many times the median change around it
SHAPE_OVERLAP = 1 / 3  # shape votes of two shots must share this much (identity)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def check_shots(shots: list[dict], num_frames: int | None = None) -> list[dict]:
    """Shots [{spec, num_frames[, start]}] -> normalised copies with checked specs and starts; ValueError saying
    what is wrong. With num_frames (the video's), the shots must cover it exactly."""
    if not isinstance(shots, list) or not shots:
        raise ValueError("a storyboard needs a non-empty list of shots, each {\"spec\": ..., \"num_frames\": N}")
    out, start = [], 0
    for i, s in enumerate(shots):
        n = s.get("num_frames") if isinstance(s, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"shot {i + 1}: num_frames must be a positive whole number, got {n!r}")
        if s.get("start", start) != start:
            raise ValueError(f"shot {i + 1} starts at frame {s['start']} but the shots before end at {start}")
        out.append({"spec": check_spec(s.get("spec")), "num_frames": n, "start": start})
        start += n
    if num_frames is not None and start != num_frames:
        raise ValueError(f"the shots cover {start} frames but the video has {num_frames}")
    return out


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames, uint8 levels: frames [T, H, W, 3] -> [T-1]."""
    x = frames.astype(np.int16)
    return np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))


def detect_cut(changes: np.ndarray, requested: int, window: int) -> int | None:
    """The detected cut near `requested` (the first frame of the new shot), or None when no change stands out.

    changes [T-1] from frame_changes: changes[i] is between frames i and i + 1, so a cut at frame c is changes[c-1].
    """
    lo, hi = max(0, requested - 1 - window), min(len(changes), requested + window)
    if hi <= lo:
        return None
    part = changes[lo:hi]
    i = int(np.argmax(part))
    if part[i] < CUT_MIN or part[i] < CUT_RATIO * float(np.median(part)):
        return None
    return lo + i + 1


def _inner(shot: dict, first: bool, last: bool) -> slice:
    """The frames of a shot less one on each side of a cut (when the shot keeps at least 3)."""
    a, b = shot["start"], shot["start"] + shot["num_frames"]
    trim_a, trim_b = (0 if first else 1), (0 if last else 1)
    return slice(a + trim_a, b - trim_b) if b - a - trim_a - trim_b >= 3 else slice(a, b)


def _bleed_free(d: Detections, spec: dict) -> float:
    """Fraction of a shot's frames with no significant object of a color the spec does not name."""
    named = {o["color"] for o in spec["objects"] if o["color"]}
    other = [k for k, c in enumerate(COLOR_NAMES) if c not in named]
    return float((~d.significant[:, other].any(axis=1)).mean())


def _looks(d: Detections, color: str) -> dict | None:
    """How a color's object looks in one shot: the share of its voting frames per shape class (SHAPES order)
    and its median extent; None when it is not seen whole in any frame."""
    tr = _Track(d, COLOR_NAMES.index(color))
    votes = tr.voters
    if not tr.present.any() or not votes.any():
        return None
    shares = np.bincount(tr.shape[votes], minlength=len(SHAPES)) / votes.sum()
    return {"shapes": shares, "extent": float(np.median(tr.extent[votes]))}


def _identity(specs: list[dict], dets: list[Detections]) -> tuple[float | None, list[dict]]:
    """Identity score and one record per (character, later shot) against the character's first shot: the same
    when seen in both, their shape votes overlap by at least SHAPE_OVERLAP (histogram intersection: one shot's
    occluded frames may outvote a few) and their extents fall on the same side of SIZE_SPLIT."""
    records = []
    for color, shots in characters(specs).items():
        first = _looks(dets[shots[0]], color)
        for s in shots[1:]:
            later = _looks(dets[s], color)
            same = False
            overlap = None
            if first is not None and later is not None:
                overlap = float(np.minimum(first["shapes"], later["shapes"]).sum())
                same = overlap >= SHAPE_OVERLAP and (first["extent"] > SIZE_SPLIT) == (later["extent"] > SIZE_SPLIT)
            records.append({"character": color, "shots": [shots[0], s], "same": bool(same), "shape_overlap": overlap,
                            "extent": [None if x is None else x["extent"] for x in (first, later)]})
    return _mean([float(r["same"]) for r in records]), records


def score_storyboard(frames: np.ndarray, shots: list[dict], fps: float | None = None) -> dict:
    """Score a storyboard video frames uint8 [T, H, W, 3] against its shots [{spec, num_frames[, start]}].

    Returns the METRICS (float, or None when not scorable: identity without a character, cuts with one shot),
    "overall" (their mean), "shots" (score_video of each shot), "cut_frames" (requested, detected) and
    "identity_checks"."""
    frames = check_frames(frames)
    shots = check_shots(shots, len(frames))
    n = len(shots)
    inner = [_inner(s, i == 0, i == n - 1) for i, s in enumerate(shots)]
    per_shot = [score_video(frames[sl], s["spec"], fps=fps) for sl, s in zip(inner, shots)]
    dets = [detect(frames[sl]) for sl in inner]
    bleed = [_bleed_free(d, s["spec"]) for d, s in zip(dets, shots)]
    changes = frame_changes(frames) if len(frames) > 1 else np.zeros(0)
    cut_frames = []
    for a, b in zip(shots[:-1], shots[1:]):
        window = max(2, min(a["num_frames"], b["num_frames"]) // 2)
        found = detect_cut(changes, b["start"], window)
        cut_frames.append({"requested": b["start"], "detected": found,
                           "ok": found is not None and abs(found - b["start"]) <= CUT_TOLERANCE})
    identity, checks = _identity([s["spec"] for s in shots], dets)
    scores: dict = {
        "adherence": _mean([p["overall"] for p in per_shot]),
        "identity": identity,
        "cuts": _mean([float(c["ok"]) for c in cut_frames]),
        "no_bleed": float(np.mean(bleed)),
    }
    scores["overall"] = _mean([scores[m] for m in METRICS])
    scores["shots"] = [{k: v for k, v in p.items() if k != "detected"} for p in per_shot]
    scores["cut_frames"] = cut_frames
    scores["identity_checks"] = checks
    return scores


# --- files: a video with its sidecar (World storyboards, `generate --storyboard` films) ---------------------


def shots_of(side: dict, path: str) -> list[dict]:
    """The shots of a sidecar: World's {"shots": [{spec, start, num_frames}]}, or a generated film's
    {"shots": [{prompt, expanded_prompt, num_frames, start}]} (specs parsed from the prompts)."""
    from chronotope.world import parse_prompt

    shots = side.get("shots")
    if not isinstance(shots, list) or not shots:
        raise ValueError(f"{path}: no 'shots' list in its sidecar; a storyboard's sidecar holds one entry per shot")
    out = []
    for s in shots:
        spec = s.get("spec") or parse_prompt(s.get("prompt") or "")
        out.append({"spec": spec, "num_frames": s.get("num_frames"), "start": s.get("start")})
    return out


def score_storyboard_file(path: str, shots: list[dict] | None = None) -> dict:
    """Read a storyboard video and score it against `shots` or its sidecar NAME.json."""
    from chronotope.bench.run import sidecar
    from chronotope.video import read_video

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such video: {path}")
    if shots is None:
        side = sidecar(path)
        if side is None:
            raise ValueError(f"{path} has no sidecar JSON with its shots (NAME.json)")
        shots = shots_of(side, path)
    frames, fps = read_video(path)
    return score_storyboard(frames, shots, fps=fps or None)


def run_storyboard_bench(folder: str, out_dir: str) -> dict:
    """Score every storyboard video of a folder (each with a sidecar holding its shots); write
    out_dir/storyboard.json with the mean of each metric and every video's scores."""
    from chronotope.atomic import atomic_write_text
    from chronotope.video import VideoReadError

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}; give a folder of storyboard videos with sidecars")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".mp4", ".gif")))
    videos, errors = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            s = score_storyboard_file(path)
        except (ValueError, VideoReadError) as err:
            errors.append({"path": path, "error": str(err)})
            continue
        videos.append({"path": path, **{k: s[k] for k in (*METRICS, "overall", "cut_frames", "identity_checks")},
                       "shot_overall": [p["overall"] for p in s["shots"]]})
    if not videos:
        raise ValueError(f"no storyboard could be scored in {folder} ({len(errors)} errors)")
    summary = {"storyboards": len(videos), **{m: _mean([v[m] for v in videos]) for m in (*METRICS, "overall")}}
    result = {"summary": summary, "videos": videos, "errors": errors}
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "storyboard.json"), json.dumps(result, indent=1))
    return result
