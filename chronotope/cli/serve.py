"""`chronotope serve`: the web app (chronotope/serve/) on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import argparse
import sys


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the web app: every generation mode from one page in a browser",
                       description="Serve a web page (Gradio) that generates in every mode (prompt, text-to-image, "
                       "i2v, extend, edit, connect, loop, long, storyboards) with one model, one request at a time. "
                       "Results (video + sidecar JSON) and uploads are written inside --out only.")
    p.add_argument("--model", metavar="DIR", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 lets anyone who reaches "
                   "this machine run the model)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--out", metavar="DIR", default="chronotope-serve",
                   help="folder for results and uploads (default ./chronotope-serve); nothing is written elsewhere")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest accepted upload in MB (default 50)")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not imported here: serve() sets up its folders first
        raise ValueError("the web app needs Gradio: pip install 'chronotope[web]'")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be from 1 to 65535")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be a positive number of MB")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"chronotope serve: listening on {args.host}: anyone who can reach it can run the model", file=sys.stderr)
    from chronotope.serve.app import serve

    serve(args.model, args.host, args.port, args.out, args.max_upload_mb)
    return 0
