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


def cond_probs(text: str) -> dict[str, float]:
    """`none=0.2,first=0.8` -> {"none": 0.2, "first": 0.8}, checked against the conditioning modes."""
    from chronotope.diffusion.flow import check_cond_probs

    out = {}
    for part in str_list(text):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected MODE=P pairs such as none=0.2,first=0.8, got {part!r}")
    try:
        return check_cond_probs(out)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
