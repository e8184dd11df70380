"""World-bench motion classifier: centroid track -> one of the World's motions (or "erratic"/"other").

Features are frame-based (no fps needed; speed is not scored): positions are in units of min(H, W)
so every aspect ratio and size is judged alike.
- still: the track stays within `eps` on both axes.
- left / right / up / down: one axis moves, >= 80% of its steps go the net direction, the other
  axis stays within `eps`, and a vertical move keeps its speed (constant velocity).
- fall_bounce: vertical only, starts at its highest point, first moves down, and either bounces
  (goes back up, never as high as the start) or accelerates (falling from rest, no floor yet).
- bounce_around: both axes move smoothly (diagonal travel, reflections off the edges); "erratic" when
  the median acceleration is as large as the median speed (shuffled frames, noise): real World
  motion is smooth between rare reflections. One-axis classes need no such test: their direction
  consistency and the fall's start-at-the-top already fail on shuffled tracks.
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = ("still", "left", "right", "up", "down", "fall_bounce", "bounce_around", "erratic", "other")


def _consistency(v: np.ndarray, direction: float, jitter: float) -> float:
    """Fraction of clearly-moving steps of velocity v [N] that go in `direction`'s sign."""
    moving = np.abs(v) > jitter
    if not moving.any():
        return 0.0
    return float((np.sign(v[moving]) == np.sign(direction)).mean())


def _accelerating(t: np.ndarray, y: np.ndarray) -> bool:
    """True when a monotone track speeds up markedly (a fall from rest), vs a constant-velocity move."""
    span = t[-1] - t[0]
    if span < 3:
        return False
    third = span / 3.0
    early = np.interp([t[0], t[0] + third], t, y)
    late = np.interp([t[-1] - third, t[-1]], t, y)
    d_early = abs(early[1] - early[0])
    d_late = abs(late[1] - late[0])
    return d_late > 1.8 * d_early + 1e-9


def classify_motion(t: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float, jitter: float) -> str | None:
    """Class of a track sampled at frames t int [N] with positions x, y [N] (units of min(H, W)).

    eps: smallest displacement that counts as motion; jitter: centroid noise per frame.
    Returns None when fewer than 2 samples make motion unmeasurable.
    """
    if t.size < 2:
        return None
    rx, ry = float(np.ptp(x)), float(np.ptp(y))
    if max(rx, ry) <= eps:
        return "still"
    dt = np.diff(t).astype(np.float64)
    vx, vy = np.diff(x) / dt, np.diff(y) / dt  # [N-1] per-frame velocity
    # an axis moves when it travels beyond eps and is not mere occlusion wobble next to the other axis
    moves_x, moves_y = rx > max(eps, 0.2 * ry), ry > max(eps, 0.2 * rx)
    if moves_x and moves_y:
        if t.size >= 5:
            # smoothness: velocity change between consecutive steps vs the speed itself; a real
            # diagonal mover changes velocity only at its rare reflections
            dtt = 0.5 * (dt[1:] + dt[:-1])
            acc = np.hypot(np.diff(vx) / dtt, np.diff(vy) / dtt)
            if np.median(acc) > 1.0 * np.median(np.hypot(vx, vy)) + 2 * jitter:
                return "erratic"
        return "bounce_around"
    if moves_x:
        dx = x[-1] - x[0]
        if abs(dx) > eps and _consistency(vx, dx, jitter) >= 0.8:
            return "left" if dx < 0 else "right"
        return "other"
    # vertical only (image y grows downward)
    first = np.flatnonzero(np.abs(vy) > jitter)
    starts_top = y[0] <= y.min() + max(jitter, 0.1 * ry)
    if first.size and vy[first[0]] > 0 and starts_top:
        up = np.flatnonzero(vy < -jitter)  # steps going up: the first one leaves the floor
        if up.size:
            bottom = int(up[0])  # sample index of the first floor contact
            rebound = y[bottom:].min()
        if up.size and y[bottom] - rebound > eps:
            return "fall_bounce" if rebound > y[0] + 0.5 * eps else "other"
        if _consistency(vy, 1.0, jitter) >= 0.8 and _accelerating(t, y):
            return "fall_bounce"
    dy = y[-1] - y[0]
    if abs(dy) > eps and _consistency(vy, dy, jitter) >= 0.8:
        return "up" if dy < 0 else "down"
    return "other"
