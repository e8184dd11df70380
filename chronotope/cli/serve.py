"""`chronotope serve`: the web app (chronotope/serve/) on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import re
import socket
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
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait while one runs (default 16); more are answered 'Queue is full' at once")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # not imported here: serve() sets up its folders first
        raise ValueError("the web app needs Gradio: pip install 'chronotope[web]'")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be from 1 to 65535")
    if not 0 < args.max_upload_mb <= 1e6:  # refuses nan and inf alike
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be a number of MB greater than 0 and at most "
                         f"1000000 (a terabyte)")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue {args.max_queue}: must be at least 1")
    check_address(args.host, args.port)  # before the model loads and --out is made: a typo costs nothing
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"chronotope serve: listening on {args.host}: anyone who can reach it can run the model", file=sys.stderr)
    from chronotope.serve.app import serve

    serve(args.model, args.host, args.port, args.out, args.max_upload_mb, args.max_queue)
    return 0


def check_address(host: str, port: int) -> None:
    """ValueError, at once, unless `host`:`port` can be listened on now: the host is an address of this machine
    (or a name for one) and the port is free. Binds a socket and closes it, as Gradio does before it starts."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if re.fullmatch(r"[\d.]+", name):  # looks like IPv4: refused without asking DNS about 999.1.1.1
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise ValueError(f"--host {host}: not an IP address (four numbers 0-255, such as 127.0.0.1)") from None
    try:
        addresses = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an address or a known name ({err.strerror}); "
                         "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    bound = 0
    for family, kind, proto, _, address in addresses:  # every one, as the server (asyncio) binds them
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket does
                s.bind(address)
            bound += 1
        except OSError as err:
            if family == socket.AF_INET6 and err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue  # IPv6 turned off: the server skips ::1 for "localhost" too
            if err.errno == errno.EADDRINUSE:
                raise ValueError(f"--port {port}: already in use on {host}; stop what listens there or choose "
                                 "another --port") from None
            if err.errno == errno.EACCES:
                raise ValueError(f"--port {port}: not allowed for this user (ports below 1024 need root); "
                                 "choose one from 1024 to 65535") from None
            if err.errno != errno.EADDRNOTAVAIL:
                raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    if not bound:
        raise ValueError(f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only) or "
                         "0.0.0.0 (every interface)")
