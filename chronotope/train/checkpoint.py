"""Crash-safe training checkpoints: safetensors for tensors, JSON for everything else, never pickle.

Layout of one checkpoint (written to `ckpt-0000100.tmp/`, files fsynced, `COMPLETE` written
last, then renamed to `ckpt-0000100/` and the parent folder fsynced):

    model.safetensors        model weights
    ema.safetensors          EMA weights (if the run keeps an EMA)
    optimizer.safetensors    optimizer state tensors, keys "state.<param index>.<name>"
    trainer_state.json       step, data position, RNG states (base64 / lists), optimizer
                             param_groups and non-tensor state, config
    COMPLETE                 marker: only folders holding it are ever resumed from

Resume picks the newest complete checkpoint; `.tmp` folders and folders without the marker are
ignored. Retention deletes old checkpoints only after a new one is complete.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from chronotope.atomic import atomic_write_text, fsync_dir  # noqa: F401 (the trainer uses ckpt.atomic_write_text)

MARKER = "COMPLETE"
_NAME = re.compile(r"^ckpt-(\d{7,})$")


# --- small atomic-IO helpers ------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --- RNG states -------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """RNG states of python `random`, numpy, torch CPU (+ CUDA if present) and `generator`, as JSON."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        out["generator"] = _b64(generator.get_state())
    return out


def restore_rng(states: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of `capture_rng`."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in states["cuda"]])
    if generator is not None and "generator" in states:
        generator.set_state(_unb64(states["generator"]))


# --- tensors <-> safetensors ------------------------------------------------------------------


def _plain_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses tied/aliased tensors)."""
    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.device.type != "meta" else None
        if ptr in seen or not v.is_contiguous() or v.device.type != "cpu":
            v = v.to("cpu").contiguous().clone()
        seen.add(ptr)
        out[k] = v
    return out


def flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (keys "state.<idx>.<name>") and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_state["param_groups"]]
    return _plain_tensors(tensors), {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer`: a dict that `optimizer.load_state_dict` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


# --- checkpoint folders -----------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}"


def is_complete(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and _NAME.match(p.name) is not None and (p / MARKER).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first (ignores `.tmp` and marker-less folders)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder: step, data position, RNG states, elapsed seconds and the run's
    config (the Trainer's settings; the task's own record under config["task"]). The one reader of that file."""
    return json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))


def resumed_task(run_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The task record (config["task"]) of the newest complete checkpoint in `run_dir`: what a resumed run must
    rebuild (its model's architecture, the options that decide its data); None when there is nothing to resume."""
    last = latest_checkpoint(run_dir) if run_dir is not None else None
    return None if last is None else read_state(last)["config"]["task"]


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `ckpt-<step>` atomically and return its path.

    Refuses (ValueError) to store non-finite weights, so a diverged run never overwrites good ones.
    """
    for label, sd in (("model", model_state), ("EMA", ema_state or {})):
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"refusing to checkpoint step {step}: {label} weights {bad[:3]} hold NaN/inf")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / checkpoint_name(step)
    tmp = run_dir / (final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = dict(state, step=step)
    save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_plain_tensors(ema_state), str(tmp / "ema.safetensors"))
    if optimizer_state is not None:
        opt_tensors, opt_meta = flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = opt_meta
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    for f in tmp.iterdir():
        _fsync_file(f)
    with open(tmp / MARKER, "w") as f:  # written last: its presence means every file above is whole
        f.write(f"step {step}\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace the old copy
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(run_dir)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a complete checkpoint: dict(model=..., ema=... or None, optimizer=... or None, state=...)."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker); pick another one")
    state = read_state(path)
    out: dict[str, Any] = {"state": state, "model": load_file(str(path / "model.safetensors"))}
    out["ema"] = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").exists() else None
    out["optimizer"] = None
    if "optimizer" in state:
        tensors = load_file(str(path / "optimizer.safetensors"))
        out["optimizer"] = unflatten_optimizer(tensors, state["optimizer"])
    return out


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints and stale `.tmp` folders; returns deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    run_dir = Path(run_dir)
    deleted = list_checkpoints(run_dir)[:-keep_last]
    deleted += [p for p in run_dir.glob("ckpt-*.tmp") if p.is_dir()]
    for p in deleted:
        shutil.rmtree(p, ignore_errors=True)
    return deleted
