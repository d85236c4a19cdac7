"""``amsmooth serve``: a local web page and JSON API showing the defense at work (needs ``amsmooth[serve]``)."""
from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ..errors import AmsmoothError
from .common import add_concept_args, add_smoothing_args, smoothing_config
from .model_options import add_model_args

DEFAULT_MODEL = "lab"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="local web page + JSON API: token heatmap, undefended vs defended images, "
                                     "certificate")
    add_model_args(p, default_model=DEFAULT_MODEL)
    add_concept_args(p)
    add_smoothing_args(p)
    p.add_argument("--steps", type=int, default=25, help="default denoising steps per image (default 25)")
    p.add_argument("--guidance", type=float, default=7.5, help="default guidance scale (default 7.5)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the API has no authentication)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--queue-size", type=int, default=4,
                   help="requests that may wait behind the running one; more get 503 at once (default 4)")
    p.add_argument("--max-body", type=int, default=16 * 1024,
                   help="largest request body in bytes; larger ones get 413 (default 16384)")
    p.set_defaults(func=run)


def require_extra() -> None:
    """One line naming the extra when FastAPI/uvicorn are missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise AmsmoothError(f"amsmooth serve needs the web extra ({e.name} is missing): "
                            "pip install 'amsmooth[serve]'") from None


def validate(args: argparse.Namespace) -> None:
    """Reject bad flags before the model is loaded."""
    if not 1 <= args.port <= 65535:
        raise AmsmoothError(f"--port must be in 1..65535, got {args.port}")
    if args.steps < 1:
        raise AmsmoothError(f"--steps must be >= 1, got {args.steps}")
    if args.queue_size < 0:
        raise AmsmoothError(f"--queue-size must be >= 0, got {args.queue_size}")
    if args.max_body < 256:
        raise AmsmoothError(f"--max-body must be >= 256 bytes, got {args.max_body}")


def check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise AmsmoothError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise AmsmoothError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(args: argparse.Namespace):  # noqa: ANN201 - a FastAPI app
    """Load the model and concepts (so a bad --model or --concept fails here, at start) and build the app."""
    from ..serve.app import create_app
    from ..serve.service import DemoService
    from .model_options import load_model

    config = smoothing_config(args)
    try:
        pipe = load_model(args)
    except AmsmoothError as e:
        hint = "; try --model tiny (random weights) or a diffusers folder" if args.model == DEFAULT_MODEL else ""
        raise AmsmoothError(f"cannot start the server: {e}{hint}") from None
    service = DemoService(pipe, config, model=args.model, unet=args.unet, steps=args.steps,
                          guidance=args.guidance)
    return create_app(service, queue_size=args.queue_size, max_body=args.max_body)


def run(args: argparse.Namespace) -> int:
    require_extra()
    validate(args)
    check_port_free(args.host, args.port)
    import uvicorn

    app = build_app(args)
    if not is_loopback(args.host):
        print(f"amsmooth: warning: binding {args.host}: anyone who can reach it can use the model (no "
              "authentication)", file=sys.stderr)
    print(f"amsmooth serve: model {args.model}, concepts {', '.join(app.state.service.config.concepts)}: "
          f"http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
