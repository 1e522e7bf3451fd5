"""The command line every stage shares: `--params`, its input and output paths, `--metrics`.

A bad params file, a bad input file or a bad value ends as ONE line on stderr that names the
field, file or value and what was expected, with exit status 2 and no traceback; a traceback is
for bugs, and `--debug` (or SMDM_DEBUG=1) shows it for input errors too.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline_steps.core.errors import InputError, one_line
from pipeline_steps.core.files import atomic_write_json
from pipeline_steps.core.params import load_config

T = TypeVar("T")
INPUT_ERRORS = (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
"""What a user causes: a bad value or a missing or wrong input. Everything else is a bug."""


def guarded(prog: str, body: Callable[[], int | None], debug: bool = False) -> int:
    """Run `body`; an input error becomes `prog: message` on one line and exit status 2
    (unless `debug` or SMDM_DEBUG=1 asks for its traceback)."""
    try:
        return body() or 0
    except INPUT_ERRORS as err:
        if debug or os.environ.get("SMDM_DEBUG", "") not in ("", "0"):
            raise
        print(f"{prog}: {one_line(err)}", file=sys.stderr)
        return 2


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line naming it, exit status 2, like every other input error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def stage_parser(stage: str, doc: str | None, paths: dict[str, tuple[str | None, str]],
                 metrics: str | None = "metrics/{stage}.json",
                 params: str | None = "params.yaml") -> argparse.ArgumentParser:
    """`--params`, one option per path (flag -> (default, help)), `--metrics` and `--debug`.
    A default of None (for `metrics` and `params` too) leaves the option unset unless given."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline_steps.{stage}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    options = {"--params": (params, f"params file, section `{stage}`"), **paths,
               "--metrics": (metrics and metrics.format(stage=stage), "metrics JSON to write")}
    for flag, (default, text) in options.items():
        shown = " (default: %(default)s)" if default is not None else ""
        parser.add_argument(flag, default=default, help=text + shown)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error too")
    return parser


def run_stage(stage: str, doc: str | None, config: type[T], paths: dict[str, tuple[str | None, str]],
              run: Callable[[T, argparse.Namespace, Any], dict[str, float]],
              argv: list[str] | None = None,
              summary: Callable[[dict[str, float]], str] | None = None) -> int:
    """Parse, load section `stage` of the params file, run with a stage tracker, write metrics."""
    args = stage_parser(stage, doc, paths).parse_args(argv)

    def body() -> None:
        cfg = load_config(config, stage, args.params)
        from pipeline_steps.core.run_tracking import stage_tracker  # MLflow only when tracking is on

        with stage_tracker(stage) as tracker:
            metrics = run(cfg, args, tracker)
        atomic_write_json(args.metrics, metrics)
        if summary is not None:
            print(summary(metrics))

    return guarded(f"pipeline_steps.{stage}", body, args.debug)
