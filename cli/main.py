"""`agile <command>`: each package registers its own subcommands; heavy imports wait for the command."""

from __future__ import annotations

import argparse
import logging
import sys

import agile.cli.score
import agile.producer.cli
import agile.serve.cli
import agile.trainer.cli
import agile.trainer.label_page
import agile.worker.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agile",
        description="Moderate text with agile classifiers: LoRA-tuned Gemma policies, scored "
        "in-process or by Celery workers on Redis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (agile.cli.score, agile.trainer.cli, agile.trainer.label_page, agile.worker.cli, agile.producer.cli,
                   agile.serve.cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library modules log (never print); the command line shows their warnings as one-liners.
    logging.basicConfig(level=logging.WARNING, format="agile: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("agile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
