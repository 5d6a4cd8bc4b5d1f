"""LoRA adapters: train from (prompt, target) pairs, save, load, and switch on one loaded model.

Adapters are injected into the loaded model in place (``peft.inject_adapter_in_model``), so the
same ``TransformersEngine`` keeps serving every chain: a chain names its adapter and each call activates
it under the model's lock (a few milliseconds), or disables all adapters for chains without one.

Training is answer-only: the loss covers the target tokens and the end-of-turn token, never the
prompt. Chains build the pairs so the target is exactly the text their constrained decoder
produces (``Chain.training_pair``), so what is trained is what is decoded.

On disk an adapter is PEFT's format -- ``adapter_config.json`` and ``adapter_model.safetensors``
(loadable with ``PeftModel.from_pretrained``) -- plus ``castline.json`` with what castline checks
on loading: the task, the label set or schema and its hash, the template, the base model, the
training settings and the evaluation figures. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from castline.models.adapter_files import (
    METADATA_FILE,
    PEFT_PREFIX,
    already_loaded,
    check_finite,
    read_adapter_files,
)
from castline.models.protocol import AdapterInfo, Prompt
from castline.models.transformers.engine import TransformersEngine
from castline.schemas.errors import ModelLoadError, UserError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and optimiser settings; the defaults suit a few hundred short examples on a small model."""

    rank: int = 16  # LoRA rank r
    alpha: int = 32  # scaling numerator (alpha / r)
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"  # PEFT's shorthand: every linear layer but the head
    learning_rate: float = 5e-4  # AdamW's default 1e-3 is too high for transfer learning
    warmup_ratio: float = 0.06  # linear warm-up, then linear decay to 0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 8
    gradient_accumulation: int = 1
    eval_fraction: float = 0.1  # held out from the examples for evaluation loss
    eval_every: int = 0  # optimiser steps between evaluations; 0 evaluates halfway and at the end
    patience: int = 0  # evaluations without improvement before training stops early; 0: never
    seed: int = 0
    max_length: int = 1024  # a longer (prompt + target) is an error, never silently cut

    def __post_init__(self) -> None:
        checks = {
            "rank": self.rank > 0,
            "alpha": self.alpha > 0,
            "dropout": 0 <= self.dropout < 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "epochs": self.epochs > 0,
            "batch_size": self.batch_size > 0,
            "gradient_accumulation": self.gradient_accumulation > 0,
            "eval_fraction": 0 <= self.eval_fraction < 1,
            "patience": self.patience >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid LoRA settings: {bad}; see LoraSettings for the allowed ranges")


@dataclass
class TrainingReport:
    """What a training run did, saved with the adapter."""

    examples: int
    held_out: int
    steps: int
    seconds: float
    train_loss: float
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    evaluation: dict[str, float] = field(default_factory=dict)  # task metrics, filled by the chain
    # Model selection: the adapter kept is the one at best_step, by ``selected_by`` (a task metric
    # on validation data, else the held-out loss); None when nothing was evaluated.
    selected_by: str = "held-out loss"
    scores: list[tuple[int, float]] = field(default_factory=list)  # (step, score), higher is better
    best_step: int | None = None
    stopped_early: bool = False
    interrupted: bool = False  # Ctrl-C: the best adapter so far is kept


def train_adapter(
    model: TransformersEngine,
    name: str,
    pairs: Sequence[tuple[Prompt, str]],
    settings: LoraSettings | None = None,
    score: tuple[str, Callable[[], float]] | None = None,
) -> TrainingReport:
    """Train a new LoRA adapter ``name`` on ``(prompt, target)`` pairs and leave it active.

    At each evaluation the adapter is scored: by ``score`` (a metric's name and a function giving
    it, higher is better, e.g. accuracy of the chain on validation data) or else by the held-out
    loss. The best-scoring weights are kept in memory and are the ones left at the end, also when
    ``patience`` stops training early or Ctrl-C interrupts it (``report.interrupted``).
    """
    from peft import LoraConfig, inject_adapter_in_model

    settings = settings or LoraSettings()
    if name in model.adapters:
        raise UserError(f"an adapter named {name!r} is already loaded; pick another name")
    if not pairs:
        raise UserError("no training examples")
    rows = [
        _encode(model, prompt, target, settings.max_length, i) for i, (prompt, target) in enumerate(pairs)
    ]
    rng = random.Random(settings.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    n_eval = int(len(rows) * settings.eval_fraction)
    eval_rows = [rows[i] for i in order[:n_eval]]
    train_rows = [rows[i] for i in order[n_eval:]]

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules
        if isinstance(settings.target_modules, str)
        else list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    # The seed drives LoRA initialisation and dropout on a forked generator: the process-wide one
    # is left as it was.
    gpus = [model.device.index or 0] if model.device.type == "cuda" else []
    with model._lock, _several_adapters_allowed(), torch.random.fork_rng(devices=gpus):
        torch.manual_seed(settings.seed)
        inject_adapter_in_model(config, model.hf_model, adapter_name=name)
        model._peft_configs[name] = config
        model.adapters[name] = AdapterInfo(name, None, "trained-in-process", {})
        model.activate(name)
        params = [p for n, p in model.hf_model.named_parameters() if f".{name}." in n and "lora_" in n]
        for p in model.hf_model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.data = p.data.float()  # LoRA weights train in fp32 even on a bf16 base
            p.requires_grad_(True)
        report = _train_loop(model, params, train_rows, eval_rows, settings, score)
        for p in params:
            p.requires_grad_(False)
        model.hf_model.eval()
    return report


@contextmanager
def _several_adapters_allowed() -> Iterator[None]:
    """PEFT warns when a second adapter is injected; several adapters on one model is the design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        yield


def _encode(
    model: TransformersEngine, prompt: Prompt, target: str, max_length: int, index: int
) -> tuple[list[int], int]:
    """Token ids of prompt + target + EOS, and where the target starts."""
    prompt_ids = model.encode_prompt(prompt)
    target_ids = [*model.encode_text(target), model.eos_id]
    if len(prompt_ids) + len(target_ids) > max_length:
        raise UserError(
            f"training example {index} has {len(prompt_ids) + len(target_ids)} tokens, over "
            f"max_length={max_length}; raise it or shorten the example"
        )
    return prompt_ids + target_ids, len(prompt_ids)


def _batches(rows: list[tuple[list[int], int]], size: int, pad: int, device: torch.device):
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, answer_start) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, answer_start : len(ids)] = torch.tensor(ids[answer_start:])  # answer-only loss
            mask[i, : len(ids)] = 1
        yield input_ids.to(device), mask.to(device), labels.to(device)


def _autocast(model: TransformersEngine) -> Any:
    """bf16 autocast where the device computes bf16 natively; LoRA weights stay fp32 masters."""
    from castline.models.loading import cpu_has_native_bf16

    device = model.device.type
    native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=native)


def _loss(
    model: TransformersEngine, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    with _autocast(model):
        logits = model.hf_model(input_ids=input_ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _train_loop(model, params, train_rows, eval_rows, settings: LoraSettings, score) -> TrainingReport:
    from transformers import get_linear_schedule_with_warmup

    pad = model.tokenizer.pad_token_id
    per_epoch = math.ceil(len(train_rows) / settings.batch_size)
    total = max(1, math.ceil(per_epoch * settings.epochs / settings.gradient_accumulation))
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(total * settings.warmup_ratio), total)
    eval_every = settings.eval_every or max(1, total // 2)
    rng = random.Random(settings.seed)
    report = TrainingReport(len(train_rows), len(eval_rows), 0, 0.0, float("nan"))
    if score is not None:
        report.selected_by = score[0]
    started, step, running = time.perf_counter(), 0, []
    best: list[torch.Tensor] | None = None  # the best weights so far, a copy in memory

    def evaluate() -> bool:
        """Score the adapter as it is now; keep its weights if best. False: stop (patience)."""
        nonlocal best
        if eval_rows:
            report.eval_losses.append((step, _eval_loss(model, eval_rows, settings.batch_size, pad)))
        if score is None and not eval_rows:
            return True
        model.hf_model.eval()
        value = score[1]() if score is not None else -report.eval_losses[-1][1]
        model.hf_model.train()
        report.scores.append((step, value))
        if report.best_step is None or value > max(v for s, v in report.scores[:-1]):
            report.best_step, best = step, [p.detach().clone() for p in params]
        since = sum(1 for s, _ in report.scores if s > report.best_step)
        return not (settings.patience and since >= settings.patience)

    model.hf_model.train()
    try:
        with tqdm(total=total, desc="training adapter", file=sys.stderr, unit="step") as bar:
            for _ in range(settings.epochs):
                rng.shuffle(train_rows)
                for micro, batch in enumerate(_batches(train_rows, settings.batch_size, pad, model.device)):
                    loss = _loss(model, *batch) / settings.gradient_accumulation
                    loss.backward()
                    running.append(loss.item() * settings.gradient_accumulation)
                    if (micro + 1) % settings.gradient_accumulation:
                        continue
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.3f}")
                    if step % eval_every == 0 or step == total:
                        going_on = evaluate()
                        if report.scores:
                            bar.set_postfix(loss=f"{running[-1]:.3f}", score=f"{report.scores[-1][1]:.3f}")
                        if not going_on:
                            report.stopped_early = True
                            raise _StopTraining
    except _StopTraining:
        pass
    except KeyboardInterrupt:
        report.interrupted = True
    if best is not None:  # leave the best adapter, not the last one
        with torch.no_grad():
            for p, kept in zip(params, best, strict=True):
                p.copy_(kept)
    report.steps, report.seconds = step, time.perf_counter() - started
    report.train_loss = sum(running[-20:]) / max(1, len(running[-20:]))
    return report


class _StopTraining(Exception):
    """Patience ran out: leave the loops, keep the best adapter."""


def _eval_loss(model: TransformersEngine, rows, batch_size: int, pad: int) -> float:
    model.hf_model.eval()
    with torch.no_grad():
        losses = [_loss(model, *b).item() for b in _batches(rows, batch_size, pad, model.device)]
    model.hf_model.train()
    return sum(losses) / len(losses)


def save_adapter(model: TransformersEngine, name: str, directory: Path, metadata: dict[str, Any]) -> Path:
    """Write adapter ``name`` in PEFT's format plus ``castline.json`` metadata."""
    from peft import get_peft_model_state_dict

    if name not in model.adapters:
        raise UserError(f"no adapter named {name!r} on this model; loaded: {sorted(model.adapters)}")
    # Written into a staging folder beside the target and swapped in whole: an interrupted save
    # leaves the previous adapter (or nothing), never a folder with some of the files.
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        model._peft_configs[name].save_pretrained(staging)
        state = get_peft_model_state_dict(model.hf_model, adapter_name=name)
        save_file(
            {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()},
            staging / "adapter_model.safetensors",
        )
        (staging / METADATA_FILE).write_text(json.dumps({**metadata, "base_model": model.name}, indent=2))
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(old)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_adapter(model: TransformersEngine, directory: Path, name: str | None) -> AdapterInfo:
    """Load an adapter directory into ``model``; returns it (its name selects it in requests).

    The default name is the folder name plus a hash of the weights, so two folders with the same
    name never stand for each other, and loading the same files twice loads them once.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import SafetensorError

    files = read_adapter_files(directory)
    name = name or files.default_name()
    loaded = already_loaded(files, name, model.adapters, model.name)
    if loaded is not None:
        return loaded
    try:
        state = load_file(files.weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory}: adapter weights are damaged ({exc})") from exc
    for key, tensor in state.items():
        check_finite(files, key, tensor.float().cpu().numpy())
    try:
        config = LoraConfig.from_pretrained(str(directory))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{directory}: adapter_config.json is not a LoRA config ({exc})") from exc
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    with model._lock, _several_adapters_allowed():
        try:
            inject_adapter_in_model(config, model.hf_model, adapter_name=name)
            result: Any = set_peft_model_state_dict(model.hf_model, state, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            if missing or result.unexpected_keys:
                first = (missing or result.unexpected_keys)[0]
                raise ModelLoadError(
                    f"adapter {directory} does not fit this model: {len(missing)} LoRA weights missing, "
                    f"{len(result.unexpected_keys)} unexpected (first: {first})"
                )
            for key, tensor in model.hf_model.state_dict().items():
                if f".{name}." in key and tensor.device.type == "meta":
                    raise ModelLoadError(f"adapter {directory} left {key} unloaded")
        except Exception as exc:
            _remove_adapter(model, name)  # nothing half-loaded: the model is as it was
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"adapter {directory} cannot be loaded on this model: {exc}") from exc
        model._peft_configs[name] = config
        info = AdapterInfo(name, directory, files.content_hash, files.metadata)
        model.adapters[name] = info
        model.hf_model.eval()
    return info


def _remove_adapter(model: TransformersEngine, name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.hf_model.modules():
        if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
            module.delete_adapter(name)
    if model._active == name:
        model._active = None


__all__ = [
    "LoraSettings",
    "TrainingReport",
    "load_adapter",
    "save_adapter",
    "train_adapter",
]
