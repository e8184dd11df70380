"""`chronotope <verb>`: the command line. Each verb parses its arguments and calls the library.

One file per group of verbs (world.py, bench.py, train.py, vae.py, generate.py, serve.py); heavy imports
(torch, av) happen inside the handlers so that `chronotope --help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from chronotope.cli.bench import add_bench
from chronotope.cli.generate import add_expand, add_generate
from chronotope.cli.model import add_average
from chronotope.cli.options import FLAGS, READS, WRITES, Parser
from chronotope.cli.serve import add_serve
from chronotope.cli.train import add_flops, add_plot, add_train
from chronotope.cli.vae import add_encode, add_reconstruct
from chronotope.cli.world import add_demo, add_manifest, add_world


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="chronotope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (add_world, add_manifest, add_demo, add_bench, add_train, add_encode, add_reconstruct, add_flops,
                add_generate, add_expand, add_plot, add_average, add_serve):
        add(sub)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """What any verb's arguments must satisfy before it starts: no output replaces one of its inputs, every output
    can be written, and a --device is one this PyTorch can use."""
    from chronotope.outputs import check_output
    from chronotope.request import check_device

    inputs = [(flag, getattr(args, dest)) for dest, flag in READS.items() if getattr(args, dest, None)]
    for dest, (flag, folder) in WRITES.items():
        if getattr(args, dest, None):
            check_output(f"{flag} {getattr(args, dest)}", getattr(args, dest), inputs, folder=folder)
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def main(argv: list[str] | None = None) -> int:
    from chronotope.request import spelled, user_errors

    args = build_parser().parse_args(argv)
    try:
        with spelled(FLAGS):
            check_args(args)
            return args.handler(args) or 0
    except user_errors() as err:
        text = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message holds
        print(f"chronotope {args.verb}: error: {text}", file=sys.stderr)
        return 2
