"""World-bench scoring: how well one video obeys its World spec (shared/DESIGN.md, "World-bench").

Every attribute score lies in [0, 1]; `overall` is the plain mean of the attributes that are
scorable for the video (None ones are left out):

  per object, averaged over the spec's objects
    color        fraction of expected frames where the color is present (ramp: <= 0.4 -> 0, >= 0.8 -> 1);
                 a frame where it is missing is excused when its neighbouring sighting was cut by the
                 frame edge, the pillar or another object (it left the frame or is hidden), or when that
                 sighting, moved on at its track's velocity, reaches the frame edge by then (an object that
                 fades as it leaves, or a small fast one that jumps out between two frames)
    shape        fraction of whole-object frames whose fill ratio and vertical skew (bench.detect.shape_of)
                 vote for the spec's shape
    size         fraction of whole-object frames whose extent (bbox side / min(H, W)) is on the spec's side of 0.212
    motion       1 if the centroid track's class (bench.motion) is the spec's motion, else 0
    permanence   pillar scenes: fraction of passes behind the pillar after which the object comes back
                 with the same shape and area (None when no object passes behind it)
  per video
    count        fraction of frames with no more colored objects (colors with a solid component) than the
                 spec has objects: an extra object costs count, a wrongly colored one costs color only; a
                 faint component clinging to a larger object (Detections.bleed: the red tip a generator
                 leaves where it blends a pink object into an orange one) is not an object
    background   fraction of frames whose border median is nearest to the spec's background
    consistency  per object: shape class and area of unoccluded frames agree with their majority / median
    flicker      1 - ramp(2 -> 12 levels) of the mean frame-to-frame change of the background (median
                 |pixel diff|, change of the border median): noise and global flashes, not moving objects
                 (always on the raw frames: detection median-filters noisy videos, bench.detect, so heavy
                 noise costs flicker and leaves color, shape, size, motion, count and background high)

An object whose color is absent (or not given) is measured on a spare color's track for shape, size
and motion (the assignment of spare colors that agrees best), so that one mistake costs one attribute.
  camera         spec with a "camera" (world/camera.py): 1 if the camera read from the background's
                 motion (bench.camera: phase correlation, objects masked) is the spec's (static, pan-left, ...,
                 zoom-out), else 0; its speed and track go to "camera_detail". Under a camera, objects' motion,
                 size and consistency are measured on their own motion: the track minus the camera's, sizes
                 divided by its zoom. `camera` is None (and left out of overall) for specs without a camera.
Images (1 frame) have no motion, consistency, flicker or permanence: they are None there. A partial
spec (parse_prompt of "a red circle": unknown fields None) scores only the attributes it names.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from chronotope.bench.camera import CameraEstimate, estimate_camera, to_world
from chronotope.bench.detect import Detections, detect
from chronotope.bench.palette import BACKGROUND_NAMES, COLOR_NAMES, nearest_background
from chronotope.bench.motion import classify_motion
from chronotope.mp4 import check_frames
from chronotope.world.vocab import MAX_OBJECTS, MOTIONS, SHAPES, SIZES

# The scorer's version: raised whenever a change to the detector or the scores moves results, so that runs
# scored by two versions are never paired (bench compare) and a re-run regenerates what an older one scored.
# 1: nearest palette color and fill-ratio shapes; 2: shades of a color, shape from fill and skew, objects that
# leave the frame excused (small objects, docs/world-bench.md).
SCORER_VERSION = 2

ATTRIBUTES: tuple[str, ...] = (
    "color", "shape", "size", "motion", "permanence", "count", "background", "consistency", "flicker",
)
SIZE_SPLIT = float(np.sqrt(0.15 * 0.30))  # geometric mean of small 0.15 and large 0.30


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at x <= lo, 1 at x >= hi, linear between (hi < lo flips it)."""
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def check_spec(spec: dict) -> dict:
    """A complete spec (vocab.validate_spec) or a partial one, whose unknown fields are None (parse_prompt
    of a short prompt); returns a normalised copy or raises ValueError saying what is wrong."""
    if not isinstance(spec, dict) or not isinstance(spec.get("objects"), list):
        raise ValueError(f"a spec is a JSON object with an 'objects' list, got {spec!r:.200}")
    objects = [{key: o.get(key) for key in ("color", "shape", "size", "motion", "speed")}
               for o in spec["objects"] if isinstance(o, dict)]
    if len(objects) != len(spec["objects"]):
        raise ValueError("every entry of a spec's 'objects' must be a JSON object")
    full = {"background": spec.get("background"), "pillar": bool(spec.get("pillar") or False), "objects": objects}
    if spec.get("camera") is not None:  # a camera scene (world/camera.py)
        from chronotope.world.camera import CAMERA_MOTIONS

        motion = spec["camera"].get("motion") if isinstance(spec["camera"], dict) else None
        if motion not in CAMERA_MOTIONS:
            raise ValueError(f"a spec's camera is {{'motion': one of {', '.join(CAMERA_MOTIONS)}, 'speed': ...}}, "
                             f"got {spec['camera']!r}")
        full["camera"] = {"motion": motion, "speed": spec["camera"].get("speed")}
    if full["background"] is not None and full["background"] not in BACKGROUND_NAMES:
        raise ValueError(f"unknown background {full['background']!r}; valid: {', '.join(BACKGROUND_NAMES)} or null")
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a spec has 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    valid = {"color": COLOR_NAMES, "shape": SHAPES, "size": tuple(SIZES), "motion": MOTIONS}
    for o in objects:
        for key, options in valid.items():
            if o[key] is not None and o[key] not in options:
                raise ValueError(f"object {o}: {key} must be one of {', '.join(options)} or null")
    named = [o["color"] for o in objects if o["color"]]
    if len(set(named)) != len(named):
        raise ValueError(f"objects of one scene have different colors, got {named}")
    return full


def _occluded_by_others(d: Detections, k: int, others: list[int], margin: int = 1) -> np.ndarray:
    """[T] True where color k's bbox touches the bbox of another significant object."""
    hit = np.zeros(d.area.shape[0], dtype=bool)
    for j in others:
        on = d.significant[:, j] & d.present[:, k]
        hit |= on & (d.x0[:, k] <= d.x1[:, j] + 1 + margin) & (d.x0[:, j] <= d.x1[:, k] + 1 + margin) \
            & (d.y0[:, k] <= d.y1[:, j] + 1 + margin) & (d.y0[:, j] <= d.y1[:, k] + 1 + margin)
    return hit


class _Track:
    """Masks [T] of one color's detections: present, untouched (nothing may cut it), whole (full area)."""

    def __init__(self, d: Detections, k: int, camera: CameraEstimate | None = None):
        T = d.area.shape[0]
        self.camera = camera is not None
        zoom = camera.zoom if camera is not None else 1.0  # sizes as the object's own, without the camera's zoom
        self.k = k
        others = [j for j in range(len(COLOR_NAMES)) if j != k]
        self.present = d.significant[:, k].copy()
        self.pillar = d.touches_pillar(margin=2)[:, k] & self.present
        self.cut = (d.touches_border()[:, k] | self.pillar | _occluded_by_others(d, k, others)) & self.present
        self.untouched = self.present & ~self.cut
        area = d.area[:, k] if camera is None else d.area[:, k] / zoom**2
        ref = area[self.untouched] if self.untouched.any() else area[self.present]
        self.ref_area = float(np.median(ref)) if ref.size else 0.0
        self.whole = self.untouched | (self.present & (area >= 0.92 * self.ref_area))
        # frames that vote on shape and size: unoccluded ones when they are at least half of the whole ones
        self.voters = self.untouched if self.untouched.sum() >= max(1, 0.5 * self.whole.sum()) else self.whole
        self.area = area
        self.shape = d.shape[:, k]  # [T] index into SHAPES (detect.shape_of: fill ratio and skew)
        self.extent = d.extent[:, k] if camera is None else d.extent[:, k] / zoom
        m = min(d.height, d.width)
        self.x, self.y = d.cx[:, k] / m, d.cy[:, k] / m
        if camera is not None:  # the object's own motion: its track minus the camera's
            self.x, self.y = to_world(self.x, self.y, camera, d.width / m, d.height / m)
        self.box = np.stack([d.y0[:, k], d.y1[:, k], d.x0[:, k], d.x1[:, k]], 1)  # [T, 4] inclusive, pixels
        self.centre = np.stack([d.cy[:, k], d.cx[:, k]], 1)  # [T, 2] pixels
        self.H, self.W = d.height, d.width
        self.T = T

    def reaches_edge(self, seen: int, t: int) -> bool:
        """Would the object seen at frame `seen`, moving on at the velocity of its nearest sightings on that side
        (up to 4), touch or cross the frame edge by frame t (t > seen: leaving; t < seen: entering)?"""
        near = np.flatnonzero(self.present)
        near = near[near <= seen][-4:] if t > seen else near[near >= seen][:4]
        if near.size < 2:
            return False
        v = (self.centre[near[-1]] - self.centre[near[0]]) / (near[-1] - near[0])  # [2] px per frame
        dy, dx = v * (t - seen)
        y0, y1, x0, x1 = self.box[seen] + np.array([dy, dy, dx, dx])
        return bool(y0 <= 0 or x0 <= 0 or y1 >= self.H - 1 or x1 >= self.W - 1)


def _color_presence(tr: _Track) -> float:
    """Fraction of frames where the object is seen, among frames where it should be seen."""
    T = tr.T
    if not tr.present.any():
        return 0.0
    seen = np.flatnonzero(tr.present)
    expected = np.ones(T, dtype=bool)
    for t in np.flatnonzero(~tr.present):
        before, after = seen[seen < t], seen[seen > t]
        # hidden or gone: the nearest sighting on either side was cut by the edge, pillar or an object, or
        # the object, moving on as it was, has reached the edge by now (it left, or is still coming in)
        if (before.size and (tr.cut[before[-1]] or tr.reaches_edge(before[-1], t))) or \
                (after.size and (tr.cut[after[0]] or tr.reaches_edge(after[0], t))):
            expected[t] = False
    return float(tr.present[expected].mean()) if expected.any() else 1.0


def _vote(ok: np.ndarray, mask: np.ndarray) -> float | None:
    return float(ok[mask].mean()) if mask.any() else None


def _motion(tr: _Track, spec_motion: str, m: int) -> tuple[float, str | None]:
    # whole (unoccluded) frames give exact centroids; when occlusion hides most of the clip, the
    # visible part's centroid still moves the object's way, so all sightings are used
    # under a camera objects leave the frame across their own motion, where a cut centroid is off the path: whole
    # frames only, while there are a few
    few = 3 if tr.camera else max(2, 0.5 * tr.present.sum())
    use = tr.whole if tr.whole.sum() >= few else tr.present
    t = np.flatnonzero(use)
    cls = classify_motion(t, tr.x[t], tr.y[t], eps=0.02 + 1.0 / m, jitter=0.25 / m)
    return (1.0 if cls == spec_motion else 0.0), cls


def _consistency(tr: _Track) -> float | None:
    use = tr.untouched if tr.untouched.sum() >= 2 else tr.whole
    if use.sum() < 2:
        return None
    shapes = tr.shape[use]
    shape_ok = float((shapes == np.bincount(shapes).argmax()).mean())
    area = tr.area[use]
    ratio = area / max(float(np.median(area)), 1e-9)
    area_ok = float(((ratio > 0.75) & (ratio < 1.33)).mean())
    return 0.5 * (shape_ok + area_ok)


def _permanence(tr: _Track, d: Detections) -> list[float]:
    """One 0/1 per pass behind the pillar: back with the same shape class and area afterwards?"""
    if d.pillar is None:
        return []
    clear = tr.present & ~tr.pillar
    events: list[float] = []
    t, T, m = 0, tr.T, min(d.height, d.width)
    while t < T:
        if clear[t]:
            t += 1
            continue
        end = t
        while end < T and not clear[end]:
            end += 1  # frames t..end-1 are hidden or at the pillar
        if t > 0 and tr.pillar[t:end].any():
            before = np.flatnonzero(tr.whole[:t] & ~tr.pillar[:t])[-3:]
            after = end + np.flatnonzero(clear[end:] & tr.whole[end:])[:3]
            if before.size and after.size:
                same_shape = np.bincount(tr.shape[before]).argmax() == np.bincount(tr.shape[after]).argmax()
                ratio = np.median(tr.area[after]) / max(np.median(tr.area[before]), 1e-9)
                events.append(float(same_shape and 0.7 < ratio < 1.43))
            elif before.size >= 2 and end == T:
                # hidden until the end: fail only if, at its speed, it should have come out in view
                vx = (tr.x[before[-1]] - tr.x[before[0]]) / max(before[-1] - before[0], 1)
                p0, p1 = d.pillar
                size = tr.extent[before[-1]]
                if abs(vx) > 0.002:
                    exit_x = (p1 + 1) / m + size if vx > 0 else p0 / m - size  # far side of the pillar
                    frames_needed = abs(exit_x - tr.x[before[-1]]) / abs(vx)
                    in_view = 0.0 < exit_x < d.width / m
                    if in_view and (T - 1 - before[-1]) > 1.5 * frames_needed + 2:
                        events.append(0.0)
        t = end
    return events


def _flicker(frames: np.ndarray, d: Detections) -> float | None:
    """Mean over consecutive frames of max(median pixel |change|, |change of the border median|), ramped."""
    T = frames.shape[0]
    if T < 2:
        return None
    step = 1 if T <= 64 else T // 64  # long videos: a sample of frame pairs keeps this fast
    idx = np.arange(0, T - 1, step)
    a = frames[idx].astype(np.int16)
    b = frames[idx + 1].astype(np.int16)
    pix = np.median(np.abs(a - b).mean(-1).reshape(idx.size, -1), axis=1)  # [n]
    bg = np.abs(d.border_color[idx + 1] - d.border_color[idx]).mean(-1)  # [n]
    change = float(np.maximum(pix, bg).mean())
    return 1.0 - _ramp(change, 2.0, 12.0)


def _measure(d: Detections, k: int | None, obj: dict, pillar: bool, camera: CameraEstimate | None = None) -> dict:
    """Shape, size, motion, consistency and permanence of spec object `obj` measured on color k's track.

    k None: no track (the object is missing): every asked-for attribute scores 0. Attributes the
    spec leaves None (a partial spec from a short prompt) score None.
    """
    tr = _Track(d, k, camera) if k is not None else None
    found = tr is not None and bool(tr.present.any())
    res: dict = {"measured_color": COLOR_NAMES[k] if found else None, "shape": 0.0, "size": 0.0,
                 "motion": 0.0, "motion_class": None, "consistency": None, "_events": []}
    if found:
        votes = tr.voters
        res["shape"] = _vote(tr.shape == SHAPES.index(obj["shape"]), votes) if obj["shape"] else None
        res["size"] = _vote((tr.extent > SIZE_SPLIT) == (obj["size"] == "large"), votes) if obj["size"] else None
        res["motion"], res["motion_class"] = _motion(tr, obj["motion"], min(d.height, d.width))
        res["consistency"] = _consistency(tr)
        if votes.any():
            res["shape_detected"] = SHAPES[int(np.bincount(tr.shape[votes]).argmax())]
            res["extent"] = float(np.median(tr.extent[votes]))
        if pillar:
            res["_events"] = _permanence(tr, d)
    for key in ("shape", "size", "motion"):
        if not obj[key]:
            res[key] = None
    if pillar:
        res["permanence"] = _mean(res["_events"])
    return res


def _agreement(res: dict) -> float:
    return sum(v for v in (res["shape"], res["size"], res["motion"]) if v is not None)


def _camera_scores(camera: CameraEstimate | None, spec: dict) -> dict:
    """{"camera": 1 when the camera read from the background moves as the spec's does (None: no camera asked),
    "camera_detail": what was read} (bench/camera.py)."""
    if camera is None:
        return {"camera": None}
    want = spec["camera"]
    speed_ok = (None if want["motion"] == "static" or not want["speed"] or camera.motion != want["motion"]
                else camera.speed == want["speed"])
    return {"camera": float(camera.motion == want["motion"]),
            "camera_detail": {"motion": camera.motion, "speed": camera.speed, "pan_rate": round(camera.pan_rate, 4),
                              "zoom_rate": round(camera.zoom_rate, 4), "speed_ok": speed_ok}}


def score_video(frames: np.ndarray, spec: dict, fps: float | None = None) -> dict:
    """Score frames uint8 [T, H, W, 3] against a World spec; returns per-attribute scores in [0, 1].

    Keys: the ATTRIBUTES (float, or None when not scorable for this video), "overall" (mean of the
    non-None ones), "objects" (per-object scores and what was detected), "detected" (video-level
    diagnostics). fps is recorded only: motion features are per frame and speed is not scored.
    """
    frames = check_frames(frames)
    spec = check_spec(spec)
    T, H, W, _ = frames.shape
    d = detect(frames)
    objs = spec["objects"]
    spec_colors = [COLOR_NAMES.index(o["color"]) if o["color"] else None for o in objs]
    colors = [_ramp(_color_presence(_Track(d, k)), 0.4, 0.8) if k is not None else None for k in spec_colors]
    # an object whose color is absent (or not given) is measured on a spare color, one seen in >= half
    # of the frames that no object asks for: the assignment that agrees best with shape/size/motion
    camera = estimate_camera(frames, fps) if "camera" in spec and T >= 2 else None
    measured = {i: _measure(d, k, objs[i], spec["pillar"], camera) for i, k in enumerate(spec_colors)
                if k is not None}
    missing = [i for i, c in enumerate(colors) if not c]
    spare = [k for k in range(len(COLOR_NAMES))
             if k not in spec_colors and (d.significant[:, k] & ~d.bleed[:, k]).mean() >= 0.5]
    if missing and spare:
        cand = {(i, k): _measure(d, k, objs[i], spec["pillar"], camera) for i in missing for k in spare}
        best, best_total = (), -1.0
        for ks in permutations(spare, min(len(missing), len(spare))):
            total = sum(_agreement(cand[i, k]) for i, k in zip(missing, ks))
            if total > best_total:
                best, best_total = ks, total
        for i, k in zip(missing, best):
            measured[i] = cand[i, k]
    for i in missing:
        if i not in measured:  # nothing to measure: the object is not in the video
            measured[i] = _measure(d, None, objs[i], spec["pillar"])
    objects = []
    for i, color in enumerate(colors):
        res = {"color": color, **measured[i]}
        if T == 1:
            res["motion"] = res["consistency"] = res["permanence"] = None
        objects.append(res)
    perm_events = [e for i in range(len(objects)) for e in measured[i].pop("_events")]

    objects_seen = d.significant & ~d.bleed  # [T, K] a color bleed on another object is not an extra object
    n_colors = objects_seen.sum(1)  # [T]
    bg = nearest_background(d.border_color)  # [T]
    scores: dict = {
        "color": _mean([o["color"] for o in objects]),
        "shape": _mean([o["shape"] for o in objects]),
        "size": _mean([o["size"] for o in objects]),
        "motion": _mean([o["motion"] for o in objects]),
        "permanence": _mean(perm_events),
        "count": float((n_colors <= len(spec["objects"])).mean()),
        "background": float((bg == BACKGROUND_NAMES.index(spec["background"])).mean()) if spec["background"] else None,
        "consistency": _mean([o["consistency"] for o in objects]),
        "flicker": _flicker(frames, d),
    }
    scores.update(_camera_scores(camera, spec))
    scores["overall"] = _mean([scores[a] for a in ATTRIBUTES + ("camera",)])
    scores["notes"] = []
    if spec["pillar"] and scores["permanence"] is None:  # say why a pillar prompt has no permanence score
        why = ("an image shows no pass behind the pillar" if T == 1
               else "the prompt asks for a pillar but none was detected in the video" if d.pillar is None
               else "no object passed behind the pillar and came out (or should have) within the clip")
        scores["notes"].append(f"permanence not scored: {why}")
    scores["objects"] = objects
    scores["detected"] = {
        "frames": T, "height": H, "width": W, "fps": fps,
        "background": BACKGROUND_NAMES[int(np.bincount(bg, minlength=3).argmax())],
        "pillar_columns": list(d.pillar) if d.pillar is not None else None,
        "max_objects_per_frame": int(n_colors.max()),
        "colors": [COLOR_NAMES[k] for k in range(len(COLOR_NAMES)) if objects_seen[:, k].mean() >= 0.5],
    }
    return scores
