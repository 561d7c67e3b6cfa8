"""`reportgen` command line: one module per subcommand, each with `register(subparsers)`
(`reportgen import` lives in import_.py: `import` is a Python keyword).

Subcommand modules import heavy libraries (torch) only inside `run`, so `reportgen render`
works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from reportgen.errors import Interrupted, ReportgenError, os_error_advice, out_of_memory

COMMANDS = ("data", "train", "eval", "analyze", "build", "render", "sweep", "export", "import_")  # modules


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
    stdout = sys.stdout
    sys.stdout = _GuardedStdout(stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout


def _run(args: argparse.Namespace) -> int:
    """Run a parsed command; every error a user can cause or meet is one line on stderr."""
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
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
        _drop_stdout()
        return 1
    except _StdoutError as e:
        print(f"reportgen: error: cannot write to standard output ({e.__cause__.strerror}); redirect it elsewhere "
              "and run again", file=sys.stderr)
        return 2
    except OSError as e:  # the file system failed outside the writes that say what they were writing
        name = f" ({e.filename})" if e.filename else ""
        print(f"reportgen: error: {e.strerror or e}{name}; {os_error_advice(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("reportgen: error: ran out of memory; use smaller sizes (README, 'Bad input', lists the limits)",
              file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not out_of_memory(e):
            raise
        print(f"reportgen: error: ran out of {'GPU ' if 'CUDA' in str(e) else ''}memory; lower the analysis config's "
              "memory_budget_mb or n_examples, or use smaller sizes (README, 'Bad input', lists the limits)",
              file=sys.stderr)
        return 2


class _StdoutError(Exception):
    """Standard output could not be written (e.g. redirected to a full disk or /dev/full)."""


class _GuardedStdout:
    """sys.stdout, with its write errors (but a closed pipe's) told apart from other file errors."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            _drop_stdout()
            raise _StdoutError() from e

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that its unwritten buffer does not fail again at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
