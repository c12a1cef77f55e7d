"""The `diffprior` command line: a table of verbs, each a module of `commands/` with PARSER (its sub-parser's
help and description), add_arguments(parser) and run(args); the errors a user can cause end in one line, named by
the subcommand given them, and so do a warning and an interruption (Ctrl-C or SIGTERM), even while torch is still
being imported."""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path

from .version import __version__

# verb: its module in commands/, in the order of `diffprior --help`
VERB_MODULES = {"restore": "restore", "demo": "demo", "sample": "sample", "denoise": "denoise", "metrics": "metrics",
                "bench": "bench", "eval": "evaluate", "reproduce": "reproduce", "train": "train", "pack": "pack",
                "models": "models", "serve": "serve"}


@functools.cache
def verbs() -> dict:
    """verb: its module, imported on first use (they import torch, a few seconds)."""
    return {verb: importlib.import_module(f".commands.{name}", __package__) for verb, name in VERB_MODULES.items()}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `diffprior CMD: error: argument --n: must be at least 1, got 0`."""

    argv: list[str] = []  # the arguments being parsed, for the hint below

    def error(self, message: str):
        hint = dash_hint(Parser.argv, message, self._option_string_actions)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def dash_hint(argv: list[str], message: str, options: Iterable[str] = ()) -> str:
    """argparse reads any word that starts with '-' as an option: say how to pass a file or value that does
    (`options`: the parser's own, which are meant as options, also abbreviated)."""
    names = message.split(":")[0].removeprefix("argument ").split("/") if message.startswith("argument -") else []
    option = names[-1] if names else "--option"
    for word, following in zip(argv, [*argv[1:], ""]):
        if word.startswith("-") and Path(word).exists():
            return f"; a file name that starts with '-' reads as an option: write ./{word}"
        if word[:1] == "-" and word[1:2].isdigit() and "," in word:
            return f"; a value that starts with '-' reads as an option: write {option}={word}"
        if word in names and "expected one argument" in message and following.startswith("-") \
                and not any(o.startswith(following.split("=")[0]) for o in options):
            return f"; a value that starts with '-' reads as an option: write {option}={following}"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffprior", description="Inverse imaging with a diffusion model as the prior.")
    parser.add_argument("--version", action="version", version=f"diffprior {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb, module in verbs().items():
        p = sub.add_parser(verb, **{"description": module.PARSER["help"], **module.PARSER})
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    _equip_subcommands(parser)
    return parser


def _equip_subcommands(parser: argparse.ArgumentParser) -> None:
    """`--debug` after any subcommand too (it is also taken before it), and the innermost subcommand's `error`
    in `args.error`, so that an unknown option is named by the subcommand given it (`diffprior bench speed`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the full traceback of an error")
                sub.set_defaults(error=sub.error)
                _equip_subcommands(sub)


# The errors a user can cause (bad files, values, devices, checkpoints, full or read-only disks, missing
# extras): one line and exit code 2. Anything else is a bug: one line, exit code 1.
USER_ERRORS = (OSError, ValueError, TypeError, RuntimeError, ImportError)


def describe(e: BaseException, batch=None) -> str:
    """An exception as the one line a user reads (`batch`: the command's --batch, named when memory ran out)."""
    if isinstance(e, OSError) and e.strerror:  # from the system: "No space left on device: out.png"
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    # torch's allocators, CPU: "... can't allocate memory: you tried to allocate N bytes"; CUDA, MPS: "... out
    # of memory ... Tried to allocate 2.00 GiB ..."
    wanted = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes|out of memory.*Tried to allocate "
                       r"([\d.]+ \w+)", str(e), re.DOTALL)
    if isinstance(e, RuntimeError) and wanted:
        size = wanted[2] or f"{int(wanted[1]) / 2**30:.1f} GiB"
        if isinstance(batch, list):
            batch = ",".join(map(str, batch))
        return (f"out of memory (one more block of {size} was needed): "
                + (f"lower --batch (now {batch})" if batch else "give a smaller input, or run on another device"))
    return str(e) or type(e).__name__


class _GuardedStream:
    """sys.stdout or sys.stderr during a command. A failed write to standard output is the command's error, named
    (`... > /dev/full` says which file was full); one to standard error (progress bars, warnings, the final
    message) is dropped, so that a full or closed log cannot stop a run or lose its results."""

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if self._name == "standard error":
                return 0
            raise OSError(e.errno, e.strerror, self._name) from e

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")  # as Ctrl-C: files being written are cleaned up, one line is printed


def main(argv: list[str] | None = None) -> int:
    previous = (signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread()
                else None)
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
    except KeyboardInterrupt as e:  # during the first imports
        print(f"diffprior: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return 130
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand that was given them, with its own --help
        args.error(f"unrecognized arguments: {' '.join(unknown)}")
    with warnings.catch_warnings():  # restores the warning display when done (main runs inside tests too)
        if not args.debug:  # a warning is one line too, without the source line that raised it
            warnings.showwarning = lambda message, *_, **__: print(
                f"diffprior {args.command}: warning: {message}", file=sys.stderr)
        return _execute(args)


def _close_progress_bars() -> None:
    """Close the progress bars a failed run left open, so that its message starts on a line of its own."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _execute(args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout, sys.stderr  # None when started with it closed: print() then writes nothing
    if stdout is not None:
        sys.stdout = _GuardedStream(stdout, "standard output")
    if stderr is not None:
        sys.stderr = _GuardedStream(stderr, "standard error")
    try:
        from .devices import set_cpu_threads
        set_cpu_threads(getattr(args, "threads", None))
        code = args.run(args)
        if stdout is not None:  # what is still buffered: failing to write it is this command's error
            sys.stdout.flush()
        return code if isinstance(code, int) else 0
    except KeyboardInterrupt as e:  # the reason when there is one: SIGTERM, or where a run's checkpoint is
        _close_progress_bars()
        print(f"diffprior {args.command}: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:
        _close_progress_bars()
        if args.debug:
            raise
        if isinstance(e, USER_ERRORS):
            print(f"diffprior {args.command}: error: {describe(e, getattr(args, 'batch', None))}", file=sys.stderr)
            return 2
        print(f"diffprior {args.command}: internal error: {type(e).__name__}: {e} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        sys.stdout, sys.stderr = stdout, stderr


if __name__ == "__main__":
    sys.exit(main())
