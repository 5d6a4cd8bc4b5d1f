"""A castline adapter folder, read and checked the same way by every engine (no torch).

On disk an adapter is PEFT's format -- ``adapter_config.json`` and ``adapter_model.safetensors`` --
plus ``castline.json`` (task, label set or schema hash, template, base model, training figures).
Everything that can be wrong with the files is found here, before an engine touches its model:
missing files, unreadable JSON, damaged or non-finite weights, another base model, a name already
taken by other weights. Adapters are identified by a hash of their weights and config, so two
folders with the same name never stand for each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from castline.models.protocol import AdapterInfo
from castline.schemas.errors import ModelLoadError, UserError

METADATA_FILE = "castline.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's key prefix, kept so PEFT itself can load ours


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter folder whose files were found readable."""

    directory: Path
    config: dict[str, Any]
    metadata: dict[str, Any]
    content_hash: str

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS_FILE

    def default_name(self) -> str:
        return f"{self.directory.resolve().name}-{self.content_hash}"


def read_adapter_files(directory: str | os.PathLike[str]) -> AdapterFiles:
    """The adapter in ``directory`` with its JSON read, or a ``ModelLoadError`` saying what is wrong."""
    directory = Path(directory)
    weights, meta_file, config_file = (
        directory / WEIGHTS_FILE,
        directory / METADATA_FILE,
        directory / CONFIG_FILE,
    )
    if not (weights.is_file() and meta_file.is_file() and config_file.is_file()):
        raise ModelLoadError(
            f"{directory} is not a castline adapter (needs {CONFIG_FILE}, {WEIGHTS_FILE} and {METADATA_FILE})"
        )
    try:
        metadata = json.loads(meta_file.read_text())
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{directory}: adapter metadata is not readable JSON ({exc})") from exc
    if not isinstance(metadata, dict) or not isinstance(config, dict):
        raise ModelLoadError(f"{directory}: adapter metadata must be JSON objects")
    content_hash = hashlib.sha256(weights.read_bytes() + config_file.read_bytes()).hexdigest()[:12]
    return AdapterFiles(directory, config, metadata, content_hash)


def already_loaded(
    files: AdapterFiles, name: str, loaded: dict[str, AdapterInfo], model_name: str
) -> AdapterInfo | None:
    """The loaded adapter these files are (same name, same weights), or None when they are new.

    Raises when the name is taken by other weights or the adapter was trained on another model.
    """
    info = loaded.get(name)
    if info is not None:
        if info.content_hash == files.content_hash:
            return info
        raise UserError(f"an adapter named {name!r} with other weights is already loaded; pick another name")
    if files.metadata.get("base_model") != model_name:
        raise ModelLoadError(
            f"adapter {files.directory} was trained on {files.metadata.get('base_model')!r}, not on "
            f"{model_name!r}; load it on the same base model"
        )
    return None


def check_finite(files: AdapterFiles, name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ModelLoadError(
            f"{files.directory}: adapter weights hold NaN or infinite values (first: {name})"
        )
