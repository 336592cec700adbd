"""The ``cites-vision`` command: one dispatcher, subcommands registered by entry points.

Each package contributes subcommands through the ``cites_vision.commands`` entry-point group in
``pyproject.toml``; a value there is a function ``register(subparsers)`` that adds one
sub-parser and sets ``func`` on it. This keeps ``model/`` free of imports of ``service/`` and
``training/``: a serving-only install simply fails to import the training commands, which are
then reported as unavailable instead of breaking the whole command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

logger = logging.getLogger("cites_vision")

ENTRY_POINT_GROUP = "cites_vision.commands"


class CommandError(Exception):
    """A user-facing CLI failure: printed as ``error: <message>`` with a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand that can be imported here."""
    parser = argparse.ArgumentParser(
        prog="cites-vision",
        description="Suggest likely CITES taxa for wildlife products from images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = (
                ep.load()
            )
        except (ImportError, AttributeError) as exc:  # an extra not installed (e.g. torch)
            logger.debug("subcommand %s unavailable: %s", ep.name, exc)
            unavailable = subparsers.add_parser(ep.name, help=f"(unavailable: {exc})")
            unavailable.set_defaults(func=_unavailable(ep.name, str(exc)))
            continue
        register(subparsers)
    return parser


def _unavailable(name: str, reason: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        raise CommandError(
            f"'{name}' needs packages that are not installed here ({reason}); "
            "install the project with the extra that provides it, e.g. pip install -e '.[train]'"
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cites-vision``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except CommandError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
