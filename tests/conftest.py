"""Shared test set-up: one torch thread (tests use tiny shapes, where threads only add overhead and
make runs on a busy 2-core machine many times slower), offline Hugging Face."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def kill_after_first_shard(cmd: list[str], env: dict, cache_dir) -> dict:
    """Run a training command and kill -9 it right after its latent cache records a first shard; returns the
    cache's cache.json as the kill left it (the resume tests of train world-model and train model)."""
    import json
    import signal
    import subprocess
    import time
    from pathlib import Path

    meta = Path(cache_dir) / "cache.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text() or "{}").get("shards"):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return json.loads(meta.read_text())

