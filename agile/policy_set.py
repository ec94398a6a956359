"""A policy set: several adapters scored on every comment in one pass, one output row per comment.

An entry names an adapter and may override its flag threshold (`threshold`) or
run only where an earlier entry flagged the comment (`if`: attribute policies
such as the target of hate make sense only for comments the hate policy flags;
elsewhere their columns stay empty). `observe` scores everything and flags
nothing, to tune thresholds; a gate still opens at its own threshold. The same
code runs in `agile score` and in the worker, so both give the same rows.
Sets are given on the command line (`--policy A --policy B --threshold A=0.8`)
or in a JSON or TOML file:

    {"policies": [{"name": "ethos-hate", "threshold": 0.8},
                  {"name": "ethos-violence", "if": "ethos-hate"}]}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agile.output import Results
from agile.wire import PayloadError, _check_set

if TYPE_CHECKING:
    from agile.policy import Policy
    from agile.scoring import Scores


class PolicySetError(ValueError):
    """A set file or set flags that cannot make a policy set; the message names the file and entry."""


@dataclass(frozen=True)
class SetEntry:
    name: str  # the adapter's name
    threshold: float | None = None  # flag at this probability instead of the adapter's own
    gate: str | None = None  # run only where this earlier entry flagged the comment

    def to_wire(self) -> dict:
        out = {"adapter": self.name, "threshold": self.threshold, "if": self.gate}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_wire(cls, entry: dict) -> SetEntry:
        return cls(entry["adapter"], entry.get("threshold"), entry.get("if"))


def check(entries: Sequence[SetEntry]) -> None:
    """The worker's own rules for a set (names once, gates earlier, thresholds in [0, 1])."""
    try:
        _check_set([e.to_wire() for e in entries])
    except PayloadError as exc:
        raise PolicySetError(str(exc)) from None


def build(names: Sequence[str], thresholds: Sequence[str] = (), path: str | Path | None = None) -> list[SetEntry]:
    """The set from `--policy NAME...`, `--policy-set FILE` and `--threshold NAME=P...`, checked."""
    if path is not None and names:
        raise PolicySetError("give --policy or --policy-set, not both")
    entries = read(path) if path is not None else [SetEntry(n) for n in names]
    by_name = {e.name: e for e in entries}
    for spec in thresholds:
        name, sep, value = spec.partition("=")
        try:
            p = float(value)
        except ValueError:
            p = -1.0
        if not sep or not 0.0 <= p <= 1.0:
            raise PolicySetError(f"--threshold {spec!r}: expected POLICY=P with P within [0, 1]")
        if name not in by_name:
            raise PolicySetError(f"--threshold {spec!r}: {name!r} is not a policy of this run "
                                 f"({', '.join(by_name) or 'none given'})")
        by_name[name] = SetEntry(name, p, by_name[name].gate)
    entries = [by_name[e.name] for e in entries]
    check(entries)
    return entries


def read(path: str | Path) -> list[SetEntry]:
    """A set file: JSON or TOML (by suffix), `policies` = list of {name, threshold?, if?}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = _toml(path).loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise PolicySetError(f"{path}: no such policy set file") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise PolicySetError(f"{path}: not a valid {'TOML' if path.suffix == '.toml' else 'JSON'} file: "
                             f"{exc}") from None
    raw = data.get("policies") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise PolicySetError(f"{path}: expected a non-empty list 'policies' of {{name, threshold?, if?}}")
    entries = []
    for n, entry in enumerate(raw):
        unknown = sorted(set(entry) - {"name", "threshold", "if"}) if isinstance(entry, dict) else None
        if unknown is None or unknown or not isinstance(entry.get("name"), str):
            raise PolicySetError(f"{path}: policies[{n}] must be {{name, threshold?, if?}}, got {entry!r:.80}")
        entries.append(SetEntry(entry["name"], entry.get("threshold"), entry.get("if")))
    try:
        check(entries)
    except PolicySetError as exc:
        raise PolicySetError(f"{path}: {exc}") from None
    return entries


def _toml(path: Path):
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        raise PolicySetError(f"{path}: TOML set files need Python 3.11 or later; use JSON") from None
    return tomllib


@dataclass
class Scored:
    """One policy's results over a batch, as columns: `values[field][j]` belongs to text `rows[j]`
    (None: to every text, in order; a gated policy scores only the texts its gate flagged)."""

    values: dict[str, list]
    rows: list[int] | None = None


def score_set(entries: Sequence[SetEntry], policy_of: Callable[[str], Policy],
              score: Callable[[Policy, list[str]], Scores], texts: list[str],
              observe: bool = False) -> tuple[dict[str, Scored], dict[str, Policy]]:
    """Every text under each entry, back to back: per entry its results as columns (`Scored`).

    Columns because a worker writes them back as they are: no dict per comment is built for a job's
    batch. A gate opens where its policy flagged the text at its threshold, observed or not."""
    scored: dict[str, Scored] = {}
    flags: dict[str, list[bool]] = {}  # a gate's decisions, one per text
    used: dict[str, Policy] = {}
    gates = {e.gate for e in entries}
    for entry in entries:
        policy = used[entry.name] = policy_of(entry.name)
        todo = range(len(texts)) if entry.gate is None else [i for i, f in enumerate(flags[entry.gate]) if f]
        values: dict[str, list] = {}
        flag = [False] * len(texts)
        if todo:
            scores = score(policy, texts if entry.gate is None else [texts[i] for i in todo])
            values = policy.columns(scores.probs, scores.truncated, entry.threshold)
            if entry.name in gates:
                for i, f in zip(todo, values.get("flagged") or [False] * len(todo), strict=True):
                    flag[i] = f
            if observe:
                values = policy.columns(scores.probs, scores.truncated, entry.threshold, observe=True)
        if entry.name in gates:
            flags[entry.name] = flag
        scored[entry.name] = Scored(values, None if entry.gate is None else todo)
    return scored, used


def set_results(scored: dict[str, Scored], n: int, rows: list[int], errors: dict[int, str]) -> Results:
    """A set's results over a batch of `n` rows, of which `rows` were scored, in order (`score_set`'s
    texts) and the others failed (`errors`: row -> why)."""
    return Results.of(n, {name: (s.values, None if s.rows is None else [rows[j] for j in s.rows])
                          for name, s in scored.items()}, errors)


def add_arguments(parser) -> None:
    """The set flags `agile score`, `agile submit` and `agile moderate` share."""
    parser.add_argument("--policy", action="append", default=[], metavar="NAME",
                        help="an adapter to score under; repeat for a policy set (one job, one row per comment)")
    parser.add_argument("--policy-set", metavar="FILE", help="a policy set file (.json or .toml), see docs/QUEUE.md")
    parser.add_argument("--threshold", action="append", default=[], metavar="POLICY=P",
                        help="flag POLICY at probability P in this run instead of its adapter's threshold")
    parser.add_argument("--observe", action="store_true",
                        help="observe only: write the scores, flag nothing (to tune thresholds)")


def from_args(args) -> list[SetEntry] | None:
    """The set the flags name (`--adapter NAME` alone counts as a set of one), or None for zero-shot."""
    names = list(args.policy)
    if args.adapter:
        if names or args.policy_set:
            raise PolicySetError("give --adapter or --policy/--policy-set, not both")
        names = [args.adapter]
    if not names and args.policy_set is None:
        if args.threshold:
            raise PolicySetError(f"--threshold {args.threshold[0]!r}: zero-shot scoring flags nothing; "
                                 "name the policy with --policy")
        return None
    if args.labels or args.instructions:
        raise PolicySetError("--labels/--instructions are for zero-shot scoring; an adapter brings its own")
    return build(names, args.threshold, args.policy_set)
