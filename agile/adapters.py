"""LoRA adapters as directories: `adapter.json` (what it is) and `lora.safetensors` (the weights).

Nothing here unpickles. An adapter is written to a temporary directory and
renamed when complete, so a half-written adapter never loads. Names resolve only
inside the adapter directories the operator configured.

Two ways to put an adapter into a model: `apply_adapter` writes it into LoRA layers
(training and evaluation of a LoRA model: the update stays separate), and
`merge_adapter` adds `scale * A @ B` into the base kernels for inference, so a policy's
forward costs what the base forward costs and any rank or targets can follow any other;
`unmerge_adapter` puts the saved base kernels back, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import weakref
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import numpy as np

from agile.files import atomic_directory
from agile.prompt import PromptTemplate
from agile.settings import QueueSettings

META_FILE = "adapter.json"
WEIGHTS_FILE = "lora.safetensors"
FORMAT_VERSION = 1
_PACKAGE = Path(__file__).resolve().parent
# The shipped adapters: `agile/shipped/` in an installed wheel (pyproject maps `adapters/` there),
# the checkout's `adapters/` in a source tree or an editable install.
SHIPPED_DIR = _PACKAGE / "shipped" if (_PACKAGE / "shipped").is_dir() else _PACKAGE.parent / "adapters"


class AdapterError(ValueError):
    """An adapter is missing, malformed, or does not fit the model it is applied to."""


@dataclass
class AdapterMeta:
    """Everything needed to score with an adapter, and to know where it came from."""

    name: str
    base_model: str
    base_checksum: str
    labels: list[str]
    instructions: str
    separator: str
    eos: str
    rank: int
    target_layers: list[str]
    objective: str
    max_length: int
    positive_label: str | None = None  # the label whose probability is the "flag" score
    threshold: float = 0.5  # on calibrated p(positive_label), chosen on validation rows
    calibration: dict = field(default_factory=dict)  # agile.calibration.Calibration.to_json(); {} = none
    data_checksum: str = ""
    settings: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parent: dict = field(default_factory=dict)  # {name, version, path} of the adapter training started from
    rounds: list = field(default_factory=list)  # one {data, rows, ...} per training round, the first first
    outputs: list[str] | None = None  # each label's name in outputs (`p_<name>`, prediction); None: the labels
    format_version: int = FORMAT_VERSION

    @property
    def template(self) -> PromptTemplate:
        return PromptTemplate(tuple(self.labels), self.instructions, self.separator, self.eos)

    @property
    def lora_blocks(self) -> int:
        """LoRA on the last N decoder blocks only (0: every block; adapters from before it: every block)."""
        return int(self.settings.get("lora_blocks", 0))

    @classmethod
    def from_json(cls, data: dict, where: str) -> AdapterMeta:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        missing = sorted(
            k for k, f in cls.__dataclass_fields__.items()
            if k not in data and f.default is MISSING and f.default_factory is MISSING
        )
        if unknown or missing:
            raise AdapterError(f"{where}: bad {META_FILE}: unknown keys {unknown}, missing {missing}")
        if data.get("format_version") != FORMAT_VERSION:
            raise AdapterError(f"{where}: adapter format {data.get('format_version')} is not supported")
        return cls(**data)


@dataclass
class Adapter:
    path: Path
    meta: AdapterMeta
    weights: dict[str, np.ndarray]
    version: str = ""  # content hash of its files (12 hex): changes when it is retrained


def adapter_version(path: Path) -> str:
    """A short content hash of the adapter's files: which exact policy scored a comment."""
    return _version(*(_read_own_file(path, name) for name in (META_FILE, WEIGHTS_FILE)))


def _version(meta: bytes, weights: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(meta)
    digest.update(weights)
    return digest.hexdigest()[:12]


def _read_own_file(path: Path, name: str) -> bytes:
    """The bytes of `path/name`, a regular file of the adapter's own: never read through a symlink.

    A symlink inside an adapter could pair one policy's metadata with another's weights, or
    read any file on the host; opening with O_NOFOLLOW refuses it in the same call that reads.
    """
    where = path / name
    try:
        # O_NONBLOCK: a FIFO planted in its place is refused below instead of hanging the open
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise AdapterError(f"{path}: not an adapter directory (needs {META_FILE} and {WEIGHTS_FILE})") from exc
    except OSError as exc:
        if where.is_symlink():
            raise AdapterError(f"{where}: is a symlink; adapter files must be regular files in their directory") \
                from exc
        raise AdapterError(f"{where}: unreadable adapter file: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AdapterError(f"{where}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _lora_variables(backbone) -> dict[str, object]:
    """LoRA variables keyed by their path (`decoder_block_3/attention/query/lora_kernel_a`)."""
    return {v.path: v for v in backbone.weights if "lora_kernel" in v.path}


def save_adapter(model, meta: AdapterMeta, path: str | Path) -> Path:
    """Write the model's LoRA weights and `meta` to directory `path`, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    variables = _lora_variables(model.backbone)
    if not variables:
        raise AdapterError("the model has no LoRA weights to save (call enable_lora first)")
    try:
        with atomic_directory(path) as work:
            arrays = {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in variables.items()}
            save_file(arrays, str(work / WEIGHTS_FILE))
            (work / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    except OSError as exc:
        raise AdapterError(f"cannot write the adapter: {exc}") from exc
    return path


def write_meta(path: str | Path, meta: AdapterMeta) -> None:
    """Replace an adapter's adapter.json in one rename, weights untouched (e.g. a new calibration)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{META_FILE}-", dir=path)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot rewrite {META_FILE}: {exc}") from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(meta), indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; adapters are shared like any file
        os.replace(tmp, path / META_FILE)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AdapterError(f"{path}: cannot rewrite {META_FILE}: {exc}") from exc


def load_adapter(path: str | Path) -> Adapter:
    """Read an adapter directory: each file read once, so its version hashes exactly what is loaded."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: not an adapter directory (needs {META_FILE} and {WEIGHTS_FILE})")
    meta_bytes, weight_bytes = (_read_own_file(path, name) for name in (META_FILE, WEIGHTS_FILE))
    try:
        meta = AdapterMeta.from_json(json.loads(meta_bytes), str(path))
        weights = load(weight_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, SafetensorError) as exc:
        raise AdapterError(f"{path}: unreadable adapter: {exc}") from exc
    return Adapter(path=path, meta=meta, weights=weights, version=_version(meta_bytes, weight_bytes))


def adapter_dirs(extra: str | None = None) -> list[Path]:
    """The shipped adapters (SHIPPED_DIR) plus the directories on AGILE_ADAPTER_PATH (or `extra`)."""
    spec = extra if extra is not None else QueueSettings.from_env().adapter_path
    return [SHIPPED_DIR] + [Path(p).expanduser().resolve() for p in spec.split(os.pathsep) if p]


def check_name(name: str) -> None:
    """An adapter name is a plain name (no path, nothing hidden): the workers and the producer refuse the rest."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise AdapterError(f"adapter name {name!r} is not a plain name")


def resolve_adapter(name: str, dirs: list[Path] | None = None) -> Path:
    """The directory of adapter `name`, found only inside `dirs`; never a path from outside."""
    check_name(name)
    dirs = adapter_dirs() if dirs is None else dirs
    for d in dirs:
        candidate = (d / name).resolve()
        if candidate.parent == d.resolve() and (candidate / META_FILE).is_file():
            return candidate
    raise AdapterError(
        f"unknown adapter {name!r}: not found in {', '.join(str(d) for d in dirs)} "
        "(add its parent directory to AGILE_ADAPTER_PATH)"
    )


def find_adapter(spec: str) -> Path:
    """An adapter the user named: a directory given as a path, else a name inside the adapter directories."""
    path = Path(spec).expanduser()
    return path if path.is_dir() else resolve_adapter(spec)


def check_base(adapter: Adapter, model) -> None:
    info = getattr(model, "agile_info", None)
    if info is not None and adapter.meta.base_checksum != info.checksum:
        raise AdapterError(
            f"{adapter.path}: adapter was trained on {adapter.meta.base_model} "
            f"(checksum {adapter.meta.base_checksum[:12]}), but the loaded model is {info.spec} "
            f"(checksum {info.checksum[:12]})"
        )


def enable_lora(backbone, rank: int, target_layers, blocks: int = 0) -> None:
    """keras-hub's `enable_lora` (the backbone frozen, LoRA on the layers named `target_layers`), on the
    last `blocks` decoder blocks only where `blocks` is given: the blocks below stay the base model's."""
    if not blocks or blocks >= len(backbone.transformer_layers):
        backbone.enable_lora(rank, target_layer_names=list(target_layers))
        return
    backbone.enable_lora(rank, target_layer_names=[])  # freezes every layer, enables none
    for block in backbone.transformer_layers[-blocks:]:
        for layer in block._flatten_layers(include_self=False):
            if layer.name in target_layers and hasattr(layer, "enable_lora"):
                layer.trainable = True
                layer.enable_lora(rank)


def apply_adapter(model, adapter: Adapter) -> None:
    """Put the adapter's LoRA weights into the model (enabling LoRA on first use)."""
    check_base(adapter, model)
    backbone = model.backbone
    variables = _lora_variables(backbone)
    if not variables:
        enable_lora(backbone, adapter.meta.rank, adapter.meta.target_layers, adapter.meta.lora_blocks)
        variables = _lora_variables(backbone)
    if set(variables) != set(adapter.weights):
        raise AdapterError(
            f"{adapter.path}: LoRA layout (rank {adapter.meta.rank}, layers "
            f"{adapter.meta.target_layers}) differs from the one enabled on this model"
        )
    for key, variable in variables.items():
        value = adapter.weights[key]
        if tuple(variable.shape) != value.shape:
            raise AdapterError(f"{adapter.path}: {key} has shape {value.shape}, expected {variable.shape}")
    for key, variable in variables.items():
        variable.assign(adapter.weights[key])


# keras' enable_lora(rank) leaves lora_alpha = rank, so its update is (alpha / rank) * A @ B = A @ B.
LORA_SCALE = 1.0
# backbone -> {kernel path: the base kernel a merged adapter replaced}; kept off the layer,
# where keras would track (and copy) a dict attribute.
_BASE_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _merge_plan(backbone, adapter: Adapter) -> list[tuple[object, object]]:
    """(kernel variable, A @ B update) per adapted kernel, checked before anything is written."""
    import torch

    kernels = {v.path: v for v in backbone.weights}
    plan = []
    for key in sorted(k for k in adapter.weights if k.endswith("/lora_kernel_a")):
        layer = key[: -len("/lora_kernel_a")]
        kernel = kernels.get(f"{layer}/kernel")
        b = adapter.weights.get(f"{layer}/lora_kernel_b")
        if kernel is None or b is None:
            raise AdapterError(f"{adapter.path}: {layer} is not a kernel of this model, "
                               "or its lora_kernel_b is missing")
        a = torch.as_tensor(adapter.weights[key], dtype=torch.float32)
        update = LORA_SCALE * (a @ torch.as_tensor(b, dtype=torch.float32))
        if tuple(update.shape) != tuple(kernel.shape):
            raise AdapterError(f"{adapter.path}: {layer} update has shape {tuple(update.shape)}, "
                               f"the kernel {tuple(kernel.shape)}")
        plan.append((kernel, update))
    if not plan or 2 * len(plan) != len(adapter.weights):
        raise AdapterError(f"{adapter.path}: expected pairs of lora_kernel_a/lora_kernel_b, "
                           f"got {sorted(adapter.weights)}")
    return plan


def merge_adapter(model, adapter: Adapter) -> None:
    """Score with the adapter at the base model's cost: its LoRA update added into the base kernels.

    Any adapter merged before is taken out first; the base kernels it changes are saved
    (on their device) so `unmerge_adapter` restores them exactly.
    """
    import torch

    check_base(adapter, model)
    backbone = model.backbone
    if _lora_variables(backbone):
        raise AdapterError(f"{adapter.path}: this model has LoRA layers enabled (a model being trained); "
                           "use apply_adapter, or merge into a model loaded without LoRA")
    plan = _merge_plan(backbone, adapter)
    unmerge_adapter(model)
    saved = _BASE_KERNELS.setdefault(backbone, {})
    with torch.no_grad():
        for kernel, update in plan:
            base = kernel.value
            saved[kernel.path] = base.detach().clone()
            kernel.assign((base.float() + update.to(base.device)).to(base.dtype))


def unmerge_adapter(model) -> None:
    """Put back the base kernels a merged adapter replaced (bit-identical); a no-op when none is merged."""
    backbone = model.backbone
    saved = _BASE_KERNELS.pop(backbone, {})
    kernels = {v.path: v for v in backbone.weights if v.path in saved}
    for path, base in saved.items():
        kernels[path].assign(base)
