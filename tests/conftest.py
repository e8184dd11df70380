"""Shared test set-up: one torch thread (tests use tiny shapes, where threads only add overhead and
make runs on a busy 2-core machine many times slower), offline Hugging Face."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
