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


def score_set(entries: Sequence[SetEntry], policy_of: Callable[[str], Policy],
              score: Callable[[Policy, list[str]], Scores], texts: list[str],
              observe: bool = False) -> tuple[list[dict], dict[str, Policy]]:
    """Every text under each entry, back to back: per text {name: fields, or None where its gate was shut}.

    Built column by column: an ungated entry's fields are already one per text, in order, so a set of
    one costs a dict per text and nothing more; flags are kept only for entries that gate another."""
    gates = {e.gate for e in entries}
    columns: dict[str, list[dict | None]] = {}
    flags: dict[str, list[bool]] = {}
    used: dict[str, Policy] = {}
    for entry in entries:
        policy = used[entry.name] = policy_of(entry.name)
        todo = range(len(texts)) if entry.gate is None else [i for i, f in enumerate(flags[entry.gate]) if f]
        decided: list[dict] = []
        shown: list[dict] = []
        if todo:
            scores = score(policy, texts if entry.gate is None else [texts[i] for i in todo])
            decided = policy.fields(scores.probs, scores.truncated, entry.threshold)
            shown = policy.fields(scores.probs, scores.truncated, entry.threshold, observe=True) if observe \
                else decided
        if entry.gate is None:
            columns[entry.name] = shown  # already one per text, in order
        else:
            column: list[dict | None] = [None] * len(texts)
            for i, result in zip(todo, shown, strict=True):
                column[i] = result
            columns[entry.name] = column
        if entry.name in gates:  # a gate opens at the threshold, observed or not
            flag = [False] * len(texts)
            for i, fields in zip(todo, decided, strict=True):
                flag[i] = bool(fields.get("flagged"))
            flags[entry.name] = flag
    if len(columns) == 1:
        ((name, column),) = columns.items()
        return [{name: result} for result in column], used
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)], used


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
