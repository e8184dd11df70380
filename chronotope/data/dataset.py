"""VideoDataset: clips from a manifest at their own aspect ratio, sized by a pixel budget.

Each item keeps the clip's aspect ratio (NaViT, Dehghani et al. 2023: no squashing to a
square), has 4k+1 frames (a causal VAE codes the first frame alone, then 4 per latent frame)
and a height/width that are multiples of 16. Images are 1-frame videos. Unreadable rows are
skipped, counted and logged once; too many of them is an error, not silent data loss.

    ds = VideoDataset("clips.csv", num_frames=17, max_pixels=64 * 64, target_fps=8)
    item = ds[0]  # {"video": [3, 17, H, W] in [-1, 1], "text": ..., "path": ..., "fps": ...}
"""

from __future__ import annotations

import json

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from chronotope.data.manifest import read_manifest
from chronotope.video import VideoReadError, check_sampling, is_image_path, read_video

log = logging.getLogger(__name__)


def check_num_frames(num_frames: int) -> None:
    """num_frames must be 4k+1 (1, 5, 9, 13, 17, ...); the error names the nearest valid values."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % 4:
        lo = max(1, (int(num_frames) - 1) // 4 * 4 + 1) if isinstance(num_frames, (int, float)) else 1
        raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, 13, 17, ...), got {num_frames}; try {lo} or {lo + 4}")


def budget_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """(h, w), multiples of 16, with h*w <= max_pixels and nearly the aspect ratio of height x width.

    Scale so the area meets the budget, then round each side down or up to a multiple of 16,
    keeping the pair within budget whose aspect ratio is closest (least center-crop), the
    larger on ties. Never below 16: a very thin clip keeps a 16-pixel short side even if that
    exceeds the budget.
    """
    if max_pixels < 256:
        raise ValueError(f"max_pixels must be at least 16*16 = 256, got {max_pixels}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    scale = math.sqrt(max_pixels / (height * width))
    sh, sw = height * scale, width * scale
    sides = lambda x: {max(16, math.floor(x / 16) * 16), max(16, math.ceil(x / 16) * 16)}
    fits = [(h, w) for h in sides(sh) for w in sides(sw) if h * w <= max_pixels]
    if not fits:
        return max(16, math.floor(sh / 16) * 16), max(16, math.floor(sw / 16) * 16)
    aspect = math.log(width / height)
    return min(fits, key=lambda hw: (round(abs(math.log(hw[1] / hw[0]) - aspect), 9), -hw[0] * hw[1]))


def resize_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, C, H, W] -> [T, C, height, width]: resize to cover (keeping aspect), center-crop the rest."""
    _, _, H, W = frames.shape
    scale = max(height / H, width / W)
    rh, rw = max(height, round(H * scale)), max(width, round(W * scale))
    if (rh, rw) != (H, W):
        frames = F.interpolate(frames, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return frames[:, :, top : top + height, left : left + width]


class VideoDataset(torch.utils.data.Dataset):
    """Items: dict(video=[C, T, H, W] float in [-1, 1], text, path, fps, + short_text/spec if present).
    A storyboard row (a `shots` column) gives its whole video at its own frame rate, with `shots`, so
    `chronotope encode` can cut it into its shots (latent_cache.storyboard_shots).

    manifest: a CSV path (see chronotope.data.manifest) or its rows.
    num_frames: 4k+1 frames per clip; a shorter video gives its longest 4k+1 prefix; None takes
        the whole video (trimmed to 4k+1). Images give 1-frame items.
    stride / target_fps: keep every stride-th frame, or resample to target_fps (exclusive).
    max_pixels: pixel budget for H*W (e.g. 64*64); see budget_size.
    random_start: cut the clip at a random offset (seeded by seed, epoch and index, so an index
        always gives the same item within an epoch; call set_epoch each epoch), else at frame 0.
    max_failure_fraction: unreadable rows are skipped (the next row is returned), counted in
        `failures` and logged once; when more than this fraction of the attempts (after at
        least `min_attempts`) fail, a RuntimeError stops training. Counts are per process
        (each DataLoader worker has its own).
    """

    def __init__(
        self,
        manifest: str | os.PathLike | list[dict],
        num_frames: int | None = 17,
        stride: int = 1,
        target_fps: float | None = None,
        max_pixels: int = 64 * 64,
        random_start: bool = True,
        seed: int = 0,
        max_failure_fraction: float = 0.1,
        min_attempts: int = 10,
    ):
        if num_frames is not None:
            check_num_frames(num_frames)
        check_sampling(stride, target_fps, "target_fps")
        if not 0 <= max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {max_failure_fraction}")
        budget_size(16, 16, max_pixels)  # validates max_pixels
        self.rows = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
        if not self.rows:
            raise ValueError(f"manifest {manifest} has no rows")
        self.num_frames, self.stride, self.target_fps = num_frames, stride, target_fps
        self.max_pixels, self.random_start, self.seed, self.epoch = max_pixels, random_start, seed, 0
        self.max_failure_fraction, self.min_attempts = max_failure_fraction, min_attempts
        self.attempts, self.failures = 0, 0
        self.failed_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _span(self, row: dict, n_out: int) -> int:
        """Source frames covered by n_out output frames."""
        if self.target_fps is not None and row["fps"] > 0:
            return math.floor((n_out - 1) * row["fps"] / self.target_fps + 0.5) + 1
        return (n_out - 1) * self.stride + 1

    def load(self, index: int) -> dict:
        """Item `index`, raising VideoReadError/ValueError if its file is unreadable (no skipping)."""
        row = self.rows[index]
        path = row["path"]
        total = max(1, int(row["num_frames"]))
        start, max_frames = 0, self.num_frames
        image = total == 1 or is_image_path(path)
        board = bool(row.get("shots")) and not image
        if image:
            max_frames = 1
        elif board:  # a storyboard is read whole, frame for frame: its shots are cut where its `shots` say
            max_frames = None
        elif self.num_frames is not None and self.random_start:
            slack = total - self._span(row, self.num_frames)
            if slack > 0:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                start = int(rng.integers(0, slack + 1))
        fps = self.target_fps if (self.target_fps is not None and not image and not board) else None
        kwargs = dict(stride=1 if fps or board else self.stride, fps=fps, max_frames=max_frames)
        try:
            frames, out_fps = read_video(path, start=start, **kwargs)  # [T, H, W, 3] uint8
        except ValueError:
            if start == 0:
                raise
            frames, out_fps = read_video(path, **kwargs)  # the manifest overstated the length
        if not board:
            frames = frames[: (len(frames) - 1) // 4 * 4 + 1]  # longest 4k+1 prefix
        h, w = budget_size(frames.shape[1], frames.shape[2], self.max_pixels)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, C, H, W]
        video = resize_crop(video, h, w).clamp(0, 255) / 127.5 - 1.0
        item = {"video": video.permute(1, 0, 2, 3).contiguous(), "text": row.get("text", ""), "path": path,
                "fps": float(out_fps)}  # video: [C, T, h, w]
        for key in ("short_text", "spec", "shots"):
            if key in row:
                item[key] = row[key] if isinstance(row[key], str) else str(row[key])
        if row.get("conditions") and not board and fps is None:  # per-frame values of the frames read
            per_frame = json.loads(row["conditions"]) if isinstance(row["conditions"], str) else row["conditions"]
            step = kwargs["stride"]
            item["conditions"] = {k: list(v)[start:start + step * len(frames):step] for k, v in per_frame.items()}
        return item

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.rows)):
            i = (index + offset) % len(self.rows)
            self.attempts += 1
            try:
                return self.load(i)
            except (VideoReadError, ValueError) as err:
                self.failures += 1
                path = self.rows[i]["path"]
                if path not in self.failed_paths:
                    self.failed_paths.add(path)
                    log.warning("skipping unreadable clip %s: %s", path, err)
                if self.attempts >= self.min_attempts and self.failures > self.max_failure_fraction * self.attempts:
                    raise RuntimeError(
                        f"{self.failures} of {self.attempts} clips failed to load (more than "
                        f"max_failure_fraction={self.max_failure_fraction}); e.g. {sorted(self.failed_paths)[:3]}. "
                        "Check the files (`chronotope manifest` lists unreadable ones) or raise max_failure_fraction."
                    ) from err
        raise RuntimeError(f"no row of the manifest could be loaded ({self.failures} failures); e.g. "
                           f"{sorted(self.failed_paths)[:3]}")
