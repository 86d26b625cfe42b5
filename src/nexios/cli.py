"""``nexios run module:app``: serve an application with nexios' WebSocket protocol."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (the current directory is on the path)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"Expected MODULE:APP (for example main:app), got {target!r}.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"Module {module_name!r} has no attribute {attribute!r}.") from None
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nexios", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve MODULE:APP")
    run.add_argument("app", help="the application, as MODULE:ATTRIBUTE")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--log-level", default="info")
    run.add_argument("--reload", action="store_true", help="restart on code changes")
    args = parser.parse_args(argv)

    from nexios.application import NexiosApp
    from nexios.server import run as serve

    if args.reload:
        # uvicorn can only reload an app given as an import string.
        serve(args.app, args.host, args.port, log_level=args.log_level, reload=True)
        return
    app = load_app(args.app)
    if isinstance(app, NexiosApp):
        app.run(args.host, args.port, log_level=args.log_level)
    else:
        serve(app, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":  # pragma: no cover
    main()
