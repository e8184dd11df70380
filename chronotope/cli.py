"""`chronotope <verb>`: the command line. Each verb parses its arguments here and calls the library.

Heavy imports (torch, av) happen inside the handlers so that `chronotope --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,17,33, got {text!r}")


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# --- world -------------------------------------------------------------------------------------


def add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="render World clips and their manifest")
    p.set_defaults(handler=run_world)


def run_world(args: argparse.Namespace) -> int:
    raise NotImplementedError("world")


# --- manifest ----------------------------------------------------------------------------------


def add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="build a manifest CSV for a folder of videos and images")
    p.set_defaults(handler=run_manifest)


def run_manifest(args: argparse.Namespace) -> int:
    raise NotImplementedError("manifest")


# --- bench -------------------------------------------------------------------------------------


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="World-bench: score videos against their prompts")
    p.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    raise NotImplementedError("bench")


# --- demo --------------------------------------------------------------------------------------


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's demo: render a few World clips")
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    raise NotImplementedError("demo")


# -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chronotope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (add_world, add_manifest, add_bench, add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"chronotope {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
