"""`python -m analysis ANSWERS_CSV --out DIR`: the result files from an answers.csv alone, no Django."""

import argparse
import sys
import time
from pathlib import Path

from .files import write_results
from .reads import AnswersError, read_answers
from .summary import DEFAULT_REPLICATES, DEFAULT_SEED, Summary, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("answers", type=Path, help="an answers.csv, as the export writes it")
    parser.add_argument("--out", type=Path, required=True, help="folder for the result files")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="an arm of the study that has no reads yet (repeatable); arms with reads need not be named",
    )
    add_bootstrap_arguments(parser)


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_REPLICATES,
        metavar="B",
        help=f"bootstrap replicates (default {DEFAULT_REPLICATES}; 0 skips the bootstrap)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})"
    )


def progress_bar(stream=sys.stderr):
    """A one-line progress bar on a terminal; plain lines elsewhere (a log, a pipe)."""
    started = time.monotonic()
    tty = hasattr(stream, "isatty") and stream.isatty()

    def show(done: int, total: int, what: str) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.monotonic() - started
        text = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}  {elapsed:.1f} s"
        if tty:
            stream.write("\r" + text + ("\n" if done == total else ""))
        else:
            stream.write(text + "\n")
        stream.flush()

    return show


def analyze(answers: Path, out: Path, *, models=(), replicates: int, seed: int, echo=print, progress=None):
    """Read, check, analyse and write; AnswersError names the bad lines of the file."""
    reads = read_answers(answers)
    echo(f"{answers}: {len(reads)} reads by {len(reads.readers)} readers of {len(reads.images)} images")
    summary: Summary = summarize(reads, models=models, replicates=replicates, seed=seed, progress=progress)
    for path in write_results(reads, summary, out):
        echo(f"wrote {path}")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split(":", 1)[1].strip())
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        analyze(
            args.answers,
            args.out,
            models=args.model,
            replicates=args.bootstrap,
            seed=args.seed,
            progress=progress_bar(),
        )
    except AnswersError as exc:
        print(f"{args.answers} cannot be analysed:\n{exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{args.answers}: {exc}", file=sys.stderr)
        return 1
    return 0
