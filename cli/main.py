"""`agile <command>`: each package registers its own subcommands; heavy imports wait for the command."""

from __future__ import annotations

import argparse
import sys

import agile.cli
import producer.cli
import trainer.cli
import worker.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agile",
        description="Moderate text with agile classifiers: LoRA-tuned Gemma policies, scored "
        "in-process or by Celery workers on Redis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (agile.cli, trainer.cli, worker.cli, producer.cli):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("agile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
