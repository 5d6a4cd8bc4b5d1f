"""``castline train`` settings as a TOML file: ``castline train --config train.toml``.

Every key is a ``castline train`` option, by its long name (``grad-accum`` or ``grad_accum``),
grouped in any tables you like; options given on the command line win over the file. ``castline
train ... --write-config train.toml`` writes the settings a run would use, to start from:

    [data]
    task = "classify"
    data = "train.csv"
    eval = "dev.csv"
    sample = 800
    labels = ["positive", "negative"]

    [training]
    out = "adapters/sentiment"
    rank = 16
    lr = 0.0005
    epochs = 2

An unknown key, or a value of the wrong type, is a ``UserError`` naming the key: a misspelt
setting never falls back silently to its default.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from castline.schemas.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Option -> the type its value must have (Path: a string, read as a path; list: joined by commas).
TRAIN_KEYS: dict[str, type] = {
    "task": str,
    "data": Path,
    "out": Path,
    "eval": Path,
    "validate": Path,
    "model": str,
    "engine": str,
    "labels": list,
    "columns": list,
    "text_column": str,
    "label_column": str,
    "limit": int,
    "sample": int,
    "seed": int,
    "schema": str,
    "spans": bool,
    "reference_column": str,
    "max_words": int,
    "target_language": str,
    "source_language": str,
    "no_calibration": bool,
    "allow_no_answer": bool,
    "batch_size": int,
    "rank": int,
    "alpha": int,
    "dropout": float,
    "lr": float,
    "epochs": int,
    "grad_accum": int,
    "patience": int,
}
CHOICES = {
    "task": ("classify", "ner", "qa", "extract", "summarize", "translate"),
    "engine": ("transformers", "llamacpp", "openai"),
}


def read_train_config(path: Path) -> dict[str, Any]:
    """The settings in ``path``, checked and converted to what the command line would give."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read the config {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in document.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, setting in items:
            option = name.replace("-", "_")
            if option in flat:
                raise UserError(f"{path}: {name!r} is set twice")
            flat[option] = setting
    unknown = sorted(set(flat) - set(TRAIN_KEYS))
    if unknown:
        raise UserError(
            f"{path}: unknown setting(s) {unknown}; the settings are castline train's options: "
            f"{sorted(TRAIN_KEYS)}"
        )
    return {name: _converted(path, name, value) for name, value in flat.items()}


def _converted(path: Path, name: str, value: Any) -> Any:
    kind = TRAIN_KEYS[name]
    if kind is list:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        raise UserError(f"{path}: {name} must be a list of strings (or one comma-separated string)")
    if kind is Path:
        if not isinstance(value, str):
            raise UserError(f"{path}: {name} must be a path (a string)")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{path}: {name} must be {kind.__name__}, not {type(value).__name__} {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise UserError(f"{path}: {name} must be one of {list(CHOICES[name])}, not {value!r}")
    return value


def write_train_config(settings: dict[str, Any], path: Path) -> None:
    """``settings`` (train options, as parsed) as a TOML file ``read_train_config`` reads back."""
    tables = {
        "data": [k for k in TRAIN_KEYS if k not in _TRAINING and k not in _MODEL],
        "model": [k for k in TRAIN_KEYS if k in _MODEL],
        "training": [k for k in TRAIN_KEYS if k in _TRAINING],
    }
    lines = [f"# castline train settings ({path.name}); run: castline train --config {path}"]
    for table, keys in tables.items():
        lines.append(f"\n[{table}]")
        for key in keys:
            value = settings.get(key)
            if value is None or value is False:
                continue  # unset: the option's default
            if TRAIN_KEYS[key] is list:
                value = [v.strip() for v in str(value).split(",")]
            elif isinstance(value, Path):
                value = str(value)
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


_MODEL = {"model", "engine"}
_TRAINING = {
    "out",
    "rank",
    "alpha",
    "dropout",
    "lr",
    "epochs",
    "grad_accum",
    "batch_size",
    "seed",
    "patience",
}
