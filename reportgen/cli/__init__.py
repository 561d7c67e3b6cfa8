"""`reportgen` command line: one module per subcommand, each with `register(subparsers)`.

Subcommand modules import heavy libraries (torch) only inside `run`, so `reportgen render`
works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from reportgen.errors import Interrupted, ReportgenError

COMMANDS = ("data", "train", "eval", "analyze", "build", "render", "sweep")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (argparse prints the whole usage first);
    subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="reportgen",
        description="Train small arithmetic transformers, analyse how they compute, and report it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"reportgen.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(f"reportgen: interrupted: {e}", file=sys.stderr)
        return e.exit_code
    except ReportgenError as e:
        print(f"reportgen: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("reportgen: interrupted; finished work was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `reportgen data ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
