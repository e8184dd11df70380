"""`chronotope average`: a model soup of fine-tunes, or a plain re-export of a model folder for shipping."""

from __future__ import annotations

import argparse


def add_average(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("average", help="average the DiTs of model folders (a model soup) or re-export one, in fp16",
                       description="Write OUT: the first MODEL folder with its DiT weights replaced by the mean "
                       "over every MODEL (fine-tunes of one DiT), its VAE or --vae's, stored in fp16 (WiSE-FT / "
                       "model soups). One MODEL: a plain re-export, e.g. to ship a run's folder unsharded.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders (model_index.json, vae/, dit/)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (replaced whole)")
    p.add_argument("--vae", default=None, metavar="VAE_DIR",
                   help="another VAE of the same latent space (a decoder-only fine-tune) instead of the first's")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16, half the size)")
    p.add_argument("--max-shard-size", default=None, help="split each weights file into parts no larger, e.g. 10MB")
    p.set_defaults(handler=run_average)


def run_average(args: argparse.Namespace) -> int:
    import torch

    from chronotope.outputs import check_output
    from chronotope.train.soup import average_models

    # OUT is replaced whole: a MODEL (or --vae) inside it would be deleted with it
    check_output(f"--out {args.out}", args.out, [("", args.models), ("--vae", args.vae)], folder=True,
                 replaces_folder=True)
    out = average_models(args.models, args.out, vae=args.vae, dtype=None if args.fp32 else torch.float16,
                         max_shard_size=args.max_shard_size)
    print(f"wrote {out} (the mean of {len(args.models)} DiT{'s' if len(args.models) > 1 else ''})")
    return 0
