"""Storyboard shots as training samples: each shot with its earlier shots as clean context.

A cache item that is a storyboard's shot (latent_cache.storyboard_shots: `storyboard` and `shot` in its index
line) is trained, by a model with DiTConfig.shot_embed > 0, as the sequence that model sees when it makes that
shot (dit/shots.py, which pipeline/storyboard.py samples with): the last latent frame(s) of up to two earlier
shots of the same storyboard, then the shot itself. DiTTask turns the layout below into a pack: the context
tokens are given (t = 0, out of the loss), positions run over the whole window and every token carries its
shot index. Everything here is host arithmetic on a handful of spans per sample; the token rows are gathered
on the device from the TokenStore, as for any item.

    context = storyboard_context(cache.rows)     # per item: the items of the earlier shots it sees
    layout = window_layout(store.offsets, store.grids, [4, 0], context)
    layout.rows, layout.t_shift, layout.shot   # int64 [L] each
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chronotope.dit.shots import context_frames, context_window, frame_shots


def storyboard_context(rows: list[dict]) -> list[list[int]]:
    """For every cache item, the items of the earlier shots its shot sees (oldest first; dit/shots.py's window):
    [] for a plain clip or image and for a storyboard's first shot. ValueError for shots of one storyboard whose
    latents differ in size (the context frames must line up with the shot)."""
    boards: dict[str, dict[int, int]] = {}
    for i, r in enumerate(rows):
        if r.get("storyboard") is not None and r.get("shot") is not None:
            boards.setdefault(str(r["storyboard"]), {})[int(r["shot"])] = i
    out = []
    for r in rows:
        shots = boards.get(str(r.get("storyboard")), {}) if r.get("shot") is not None else {}
        window = [shots[s] for s in context_window(int(r["shot"]), shots)] if shots else []
        for c in window:
            if tuple(rows[c]["shape"][2:]) != tuple(r["shape"][2:]) or rows[c]["shape"][0] != r["shape"][0]:
                raise ValueError(f"storyboard {r['storyboard']}: shot {rows[c]['shot']} has latents "
                                 f"{rows[c]['shape']} but shot {r['shot']} {r['shape']}; the shots of a storyboard "
                                 "share one size (re-encode it)")
        out.append(window)
    return out


def window_lengths(shapes: list[tuple[int, ...]], context: list[list[int]], patch: tuple[int, int, int]) -> list[int]:
    """Tokens of every item's training sample: its own latent [C, t, h, w] plus its context frames."""
    pt, ph, pw = patch
    out = []
    for shape, window in zip(shapes, context):
        frames = shape[1] + sum(_num(context_frames(shapes[c][1])) for c in window)
        out.append(frames // pt * (shape[2] // ph) * (shape[3] // pw))
    return out


@dataclass
class WindowLayout:
    """The host layout of a pack's samples, each its context frames then its own (patch pt = 1 when any context).

    rows [L]: token rows of the TokenStore, in pack order; t_shift [L]: added to each token's stored t position
    (context frames sit at 0..m-1, the shot at m..); shot [L]: shot index per token (0 = the shot being made);
    grids: token grid (t, h, w) per sample, windows included; context: context latent frames per sample."""

    rows: np.ndarray
    t_shift: np.ndarray
    shot: np.ndarray
    grids: list[tuple[int, int, int]]
    context: list[int]


def window_layout(offsets: np.ndarray, grids: list[tuple[int, int, int]], items: list[int],
                  context: list[list[int]]) -> WindowLayout:
    """WindowLayout of `items` from the TokenStore's offsets [N+1] and token grids (t, h, w per item)."""
    if not any(context[i] for i in items):  # no storyboard context (the common case): no per-sample loop
        starts, ends = offsets[items], offsets[np.asarray(items, dtype=np.int64) + 1]
        rows = _spans(starts, ends)
        zeros = np.zeros(rows.size, dtype=np.int64)
        return WindowLayout(rows, zeros, zeros.copy(), [grids[i] for i in items], [0] * len(items))
    starts, ends, shifts, shots, out_grids, ms = [], [], [], [], [], []
    for i in items:
        t, h, w = grids[i]
        taken = [context_frames(grids[c][0]) for c in context[i]]  # latent frames of each earlier shot
        at = 0
        for c, sl in zip(context[i], taken):
            starts.append(offsets[c] + sl.start * h * w)
            ends.append(offsets[c] + sl.stop * h * w)
            shifts.append(at - sl.start)
            at += _num(sl)
        starts.append(offsets[i])
        ends.append(offsets[i + 1])
        shifts.append(at)
        shots.append(np.repeat(frame_shots([_num(sl) for sl in taken], t), h * w))
        out_grids.append((at + t, h, w))
        ms.append(at)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    n = ends - starts
    return WindowLayout(_spans(starts, ends), np.repeat(np.asarray(shifts, dtype=np.int64), n), np.concatenate(shots),
                        out_grids, ms)


def _spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The rows of the spans [starts[j], ends[j]) one after another: int64 [sum of their lengths]."""
    n = ends - starts
    return np.repeat(starts - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))


def _num(sl: slice) -> int:
    return sl.stop - sl.start
