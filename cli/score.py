"""`agile score`: label probabilities for texts or a comment file, in-process (no queue)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agile.policy_set import add_arguments as add_set_arguments
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, DEFAULT_MAX_LENGTH, DEFAULT_SEPARATOR


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score texts or a comment file in this process",
        description="Score texts (arguments) or a CSV/JSONL/Parquet file with an agile classifier.",
    )
    p.add_argument("texts", nargs="*", help="texts to score (or use --input)")
    p.add_argument("--input", "-i", type=Path, help="comment file: .csv, .jsonl or .parquet")
    p.add_argument("--output", "-o", type=Path, help="output file (.csv/.jsonl/.parquet); default: stdout CSV")
    p.add_argument("--model", default=None, help="model spec (default: the adapter's base, else gemma3_270m)")
    p.add_argument("--adapter", help="adapter directory, or a name in adapters/ or AGILE_ADAPTER_PATH")
    add_set_arguments(p)
    p.add_argument("--labels", help=f"comma-separated label words (zero-shot; default {','.join(DEFAULT_LABELS)})")
    p.add_argument("--instructions", help="instructions (zero-shot)")
    p.add_argument("--separator", help=f"separator token (zero-shot; default {DEFAULT_SEPARATOR})")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default="id", help="id column; rows without one get their row number")
    p.add_argument("--delimiter", help="CSV delimiter (detected when omitted)")
    p.add_argument("--max-length", type=int, help=f"tokens per prompt (default: adapter's, else {DEFAULT_MAX_LENGTH})")
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default: 16 on a CPU, 512 on a GPU)")
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows read and scored per step")
    p.add_argument("--dtype", help="float32 | bfloat16 (default: the model's)")
    p.set_defaults(func=run)


def _adapter_policy(name: str, max_length: int | None):
    """An adapter's policy (weights loaded) from its directory or its name in the adapter directories."""
    from agile.adapters import load_adapter, resolve_adapter
    from agile.policy import Policy

    path = Path(name)
    if not path.is_dir():
        path = resolve_adapter(name)
    return Policy.from_adapter(load_adapter(path)).with_max_length(max_length)


def _zero_shot(args: argparse.Namespace):
    """The zero-shot policy the flags describe (no adapter)."""
    from agile.policy import Policy
    from agile.prompt import PromptTemplate

    labels = tuple(s.strip() for s in args.labels.split(",")) if args.labels else DEFAULT_LABELS
    template = PromptTemplate(
        labels, args.instructions or DEFAULT_INSTRUCTIONS, args.separator or DEFAULT_SEPARATOR
    )
    return Policy(template).with_max_length(args.max_length)


def _check_inputs(args: argparse.Namespace) -> None:
    """Something to score, no comment file passed where texts go (it would be scored as a text), and an
    output that can be written and is none of the files the run reads: all before the model loads."""
    from agile.files import check_output
    from agile.tables import table_format

    if args.input is None and not args.texts:
        raise ValueError("nothing to score: give texts as arguments or --input FILE")
    if args.output is not None:
        table_format(args.output)
        check_output(args.output, (args.input, args.policy_set))
    for text in args.texts:
        try:
            is_file = bool(table_format(text)) and Path(text).is_file()
        except (OSError, ValueError):  # no comment file's suffix, or not a path at all
            is_file = False
        if is_file:
            raise ValueError(f"{text!r} is a file, and arguments are scored as texts: use --input {text}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agile import output
    from agile.adapters import AdapterError, merge_adapter
    from agile.models import DEFAULT_MODEL, ModelLoadError, load_model, model_info
    from agile.policy_set import PolicySetError, SetEntry, from_args, score_set, set_results
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.tables import Chunk, TableError, TableWriter, read_chunks
    from agile.tokens import LabelError

    writer = None
    try:
        _check_inputs(args)
        if args.separator and (args.adapter or args.policy or args.policy_set):
            raise PolicySetError("--separator is for zero-shot scoring; an adapter brings its own")
        entries = from_args(args)
        if entries is None:  # zero-shot: a set of one policy, made from the flags
            zero_shot = _zero_shot(args)
            entries, policies = [SetEntry(zero_shot.name)], {zero_shot.name: zero_shot}
        else:
            policies = {e.name: _adapter_policy(e.name, args.max_length) for e in entries}
        first = next(iter(policies.values()))
        spec = args.model or (first.adapter.meta.base_model if first.adapter else DEFAULT_MODEL)
        model = load_model(spec, dtype=args.dtype, sequence_length=max(p.max_length for p in policies.values()))
        scorers = {id(p): LabelScorer(model, p.template, ScoringSettings(p.max_length, args.batch_size))
                   for p in policies.values()}  # by identity: an entry may name its adapter by path
        applied = None  # the policy whose LoRA weights are in the model now

        def score(policy, texts):
            nonlocal applied
            if applied is not policy and policy.adapter is not None:
                merge_adapter(model, policy.adapter)  # any rank and targets may follow any other
            applied = policy
            return scorers[id(policy)].score(texts)

        single = len(entries) == 1 and entries[0].gate is None
        layout = (output.one_policy(first.name, first.names, entries[0].name) if single else
                  output.per_policy({n: p.positive_name for n, p in policies.items()},
                                    {n: p.version for n, p in policies.items()}))
        if args.input:
            chunks = read_chunks(args.input, args.text_column, args.id_column, args.chunk_rows,
                                 delimiter=args.delimiter)
        else:
            chunks = iter([Chunk(0, [str(i) for i in range(len(args.texts))], list(args.texts))])
        writer = (TableWriter(args.output, schema=layout.schema()) if args.output
                  else TableWriter(sys.stdout, fmt="csv"))
        name = model_info(model).spec
        start, n_cut, failed = time.perf_counter(), 0, Failures()
        with tqdm(unit="comment", disable=args.input is None, file=sys.stderr) as bar:
            for chunk in chunks:
                todo, problems = failed.check(chunk)
                scored = score_set(entries, policies.__getitem__, score, [chunk.texts[i] for i in todo],
                                   args.observe)[0] if todo else {}
                errors = {i: why for i, why in enumerate(problems) if why is not None}
                columns = layout.columns(chunk.ids, set_results(scored, len(chunk.ids), todo, errors), name)
                writer.write_columns(columns)
                n_cut += sum(map(bool, columns["truncated"]))
                bar.update(len(chunk.texts))
        writer.close()
        elapsed = time.perf_counter() - start
        under = f" under {len(policies)} policies ({', '.join(policies)})" if not single else ""
        print(f"agile score: {writer.rows} rows{under} in {elapsed:.1f} s ({writer.rows / max(elapsed, 1e-9):.1f}"
              f" comments/s); {n_cut} comment(s) cut to fit {max(p.max_length for p in policies.values())} tokens"
              + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
        return failed.report()
    except (TableError, AdapterError, ModelLoadError, LabelError, ValueError, OSError) as exc:
        # ValueError: PolicySetError and OutputError too; OSError: a file that cannot be read or written
        keep_partial(writer, args.output, "the error")
        print(f"agile score: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        keep_partial(writer, args.output, "Ctrl-C")
        raise


def keep_partial(writer, output: Path | None, why: str) -> None:
    """Rows already scored are not lost: they move to OUTPUT.partial.EXT; OUTPUT itself is untouched."""
    if writer is None:
        return
    kept = writer.abort(keep=True)
    if kept:
        print(f"agile score: the {writer.rows} rows scored before {why} are in {kept}; {output} was not touched",
              file=sys.stderr)


class Failures:
    """Rows that cannot be scored (empty, too long, not a string), found by the rule the workers
    apply (`agile.wire.text_problem`), so `agile score` and a queue job fail the same rows."""

    def __init__(self) -> None:
        self.count, self.first = 0, ""

    def check(self, chunk) -> tuple[list[int], list[str | None]]:
        """The chunk's rows to score, and each row's problem (None for a good row)."""
        from agile.wire import text_problem

        problems = [text_problem(t) for t in chunk.texts]
        for n, why in enumerate(problems):
            if why is not None:
                self.count += 1
                self.first = self.first or f"row {chunk.start + n} (id {chunk.ids[n]!r}): {why}"
        return [i for i, why in enumerate(problems) if why is None], problems

    def report(self) -> int:
        """The exit status a queue job gives: 1 when some rows failed, 0 when all were scored."""
        if not self.count:
            return 0
        print(f"agile score: {self.count} row(s) could not be scored and carry an error (first: {self.first})",
              file=sys.stderr)
        return 1
