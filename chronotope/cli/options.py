"""Argument types shared by the verbs (comma-separated lists)."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,17,33, got {text!r}")


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
