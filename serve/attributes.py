"""Which policy (adapter) answers each Perspective attribute, and what language it was trained on.

The map is a small JSON file (AGILE_SERVE_ATTRIBUTES or `--attributes`):

    {"languages": ["en"],
     "attributes": {"TOXICITY": "ethos-hate", "IDENTITY_ATTACK": "ethos-hate", "THREAT": "ethos-violence"}}

Without one the server uses DEFAULT below. An attribute not in the map is refused
with 400, never scored by some other policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from agile.settings import SettingsError
from agile.wire import NAME

# ETHOS (the shipped policies' data) is English. TOXICITY and IDENTITY_ATTACK both
# ask "is this hate speech?"; THREAT asks "does it incite or threaten violence?".
DEFAULT = {
    "languages": ["en"],
    "attributes": {"TOXICITY": "ethos-hate", "IDENTITY_ATTACK": "ethos-hate", "THREAT": "ethos-violence"},
}


@dataclass(frozen=True)
class AttributeMap:
    attributes: dict[str, str]  # Perspective attribute -> adapter name
    languages: list[str] = field(default_factory=lambda: ["en"])  # what the policies were trained on

    @property
    def policies(self) -> list[str]:
        """Every policy the server may send to the workers (also the ones /v1/score accepts)."""
        return sorted(set(self.attributes.values()))

    @classmethod
    def from_dict(cls, data, where: str) -> AttributeMap:
        if not isinstance(data, dict) or set(data) - {"languages", "attributes"}:
            raise SettingsError(f"{where}: expected an object with 'attributes' and optionally 'languages'")
        attributes = data.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            raise SettingsError(f"{where}: 'attributes' must be a non-empty object of ATTRIBUTE: policy")
        for attr, policy in attributes.items():
            if not isinstance(policy, str) or not NAME.match(policy) or policy.startswith("."):
                raise SettingsError(f"{where}: attribute {attr!r}: {policy!r} is not a plain adapter name")
        languages = data.get("languages", ["en"])
        if not (isinstance(languages, list) and languages and all(isinstance(x, str) and x for x in languages)):
            raise SettingsError(f"{where}: 'languages' must be a non-empty list of language codes")
        return cls(dict(attributes), list(languages))

    @classmethod
    def load(cls, path: str | None) -> AttributeMap:
        """The map in `path`, or the documented default when no path is given."""
        if not path:
            return cls.from_dict(DEFAULT, "the default attribute map")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"attribute map {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"attribute map {path}: not JSON: {exc}") from None
        return cls.from_dict(data, f"attribute map {path}")
