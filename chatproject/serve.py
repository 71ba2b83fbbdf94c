"""Run the ASGI app under daphne: `python -m chatproject.serve --port 8000`."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve the chat ASGI app with daphne.")
    parser.add_argument("--bind", default=os.environ.get("BIND", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", args.bind, "-p", str(args.port), "--proxy-headers", "chatproject.asgi:application"]
    )


if __name__ == "__main__":
    sys.exit(main())
