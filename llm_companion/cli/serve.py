"""``llm-companion serve``: serve a model over an OpenAI-compatible API with a chat page, on this machine."""
from __future__ import annotations

import argparse
import sys

from llm_companion.cli.errors import UserError
from llm_companion.inference.quantize import add_weights_argument
from llm_companion.profiles import default_device
from llm_companion.serving.engine import load_engine


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", metavar="smollm2|assistant|DIR",
                   help="smollm2 (SmolLM2-135M-Instruct, chapter 8; default), assistant (models/assistant, "
                        "chapter 7) or a directory written by save_assistant")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder in peft's format (`llm-companion finetune`, save_adapter or peft) "
                        "to apply")
    add_weights_argument(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: none)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from llm_companion.serving.app import create_app
    except ImportError as e:
        raise UserError(f"serving needs FastAPI and uvicorn ({e.name} is missing); "
                        f"install them with: pip install -e '.[serve]'") from None
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: --host {args.host} makes the server reachable from other machines"
              + ("" if args.api_key else "; anyone who can reach it can use the model (set --api-key)"),
              file=sys.stderr, flush=True)
    _check_port(args.host, args.port, UserError)  # before loading the model, which takes seconds

    engine = load_engine(args.model, adapter=args.adapter, weights=args.weights,
                         device=args.device or default_device())
    print(f"Serving {engine.description} as model {engine.name!r}\n"
          f"  chat page: http://{args.host}:{args.port}/\n"
          f"  API:       http://{args.host}:{args.port}/v1 (OpenAI chat completions)",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(engine, api_key=args.api_key), host=args.host, port=args.port, log_level="warning")
    return 0


def _check_port(host: str, port: int, error) -> None:
    """Raise ``error`` naming the fix when ``host:port`` cannot be bound (in use, or not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise error(f"--host {host} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise error(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port "
                        f"or stop what uses it") from None
