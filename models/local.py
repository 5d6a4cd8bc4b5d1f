"""``LocalModel``: one loaded decoder model and tokenizer, generating under constraints.

This is the seam between chains and the model backend. Chains hand it chat-formatted prompts,
an ``OutputSpec`` and ``GenerationSettings``; it returns ``Generation`` records (text, token ids,
and whether the output was complete). Everything torch-shaped stays behind this class.

Batches are real batches: prompts are left-padded with attention masks and go through one
``generate`` call. Compiled constraint indexes are cached per regex, so a chain pays for
compilation once per output type. Calls are serialised by a lock: a model's weights are shared,
and running two generate calls at once on 2 CPU cores is slower than running them in turn.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from outlines_core import Index, Vocabulary
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from castline.models.constraints import GuidedLogitsProcessor, build_vocabulary, replay_is_complete
from castline.models.loading import pick_dtype, resolve_source, weights_dir
from castline.models.spans import VocabularyTrie
from castline.prompts.templates import Message
from castline.schemas.errors import InvalidInputError, ModelLoadError, OutputTypeError
from castline.schemas.output_types import OutputSpec
from castline.schemas.settings import GenerationSettings


@dataclass(frozen=True)
class Generation:
    """One generated output, exactly as decoded."""

    text: str
    token_ids: tuple[int, ...]
    complete: bool  # False when max_new_tokens cut the output off
    token_logprobs: tuple[float, ...] = ()  # of each token, under the constrained distribution


class LocalModel:
    """A decoder model and its tokenizer, loaded in this process.

    >>> model = load_model()            # the embedded SmolLM2-135M-Instruct
    >>> model.generate([model.chat_prompt([{"role": "user", "content": "Hi"}])])
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "custom"):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        # Left padding keeps every row's last prompt token at the same position for generation.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._vocabulary: Vocabulary | None = None
        self._indexes: dict[str, Index] = {}
        self._trie: VocabularyTrie | None = None
        self._lock = threading.RLock()
        self.adapters: dict[str, Any] = {}  # LoRA adapters injected into hf_model, by name
        self._active: str | None = None

    # -- identity and limits -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    @property
    def max_context(self) -> int:
        """Tokens the model can attend to (prompt plus output)."""
        return int(getattr(self.hf_model.config, "max_position_embeddings", 2048))

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, device={self.device}, dtype={self.dtype})"

    # -- adapters ------------------------------------------------------------------------------

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` the one used by the next calls (None: the base model alone)."""
        if adapter == self._active:
            return
        if adapter is not None and adapter not in self.adapters:
            raise ModelLoadError(f"no adapter named {adapter!r} is loaded; loaded: {sorted(self.adapters)}")
        from peft.tuners.tuners_utils import BaseTunerLayer, set_adapter

        with self._lock:
            if adapter is not None:
                set_adapter(self.hf_model, adapter, inference_mode=True)
            for module in self.hf_model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.enable_adapters(adapter is not None)
            self._active = adapter

    def merged(self, adapter: str) -> LocalModel:
        """A copy of this model with ``adapter`` merged into its weights, for the fastest inference.

        The copy costs the memory of a second model; this model and its adapters are unchanged.
        """
        if adapter not in self.adapters:
            raise ModelLoadError(f"no adapter named {adapter!r} is loaded; loaded: {sorted(self.adapters)}")
        import copy

        from peft.tuners.tuners_utils import BaseTunerLayer

        with self._lock:
            hf_model = copy.deepcopy(self.hf_model)
        copy_model = LocalModel(hf_model, self.tokenizer, name=self.name)
        copy_model.adapters = dict(self.adapters)
        copy_model.activate(adapter)
        for module in hf_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge(adapter_names=[adapter])
        return copy_model

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[LocalModel]:
        """Hold the model with ``adapter`` active for a whole batch of calls."""
        with self._lock:
            if adapter is not None or self.adapters:
                self.activate(adapter)
            yield self

    # -- prompts -------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """Messages formatted with the model's chat template, ready for the assistant's turn."""
        if self.tokenizer.chat_template is None:
            # Base models without a chat template: plain turns, the assistant's open at the end.
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return str(
            self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, prompts: Sequence[str], room: int = 0) -> dict[str, torch.Tensor]:
        """Tokenize ``prompts`` as one left-padded batch; refuse prompts that do not fit.

        ``room`` is the number of tokens that must still fit after the prompt (the output).
        """
        batch = self.tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for i, n in enumerate(lengths):
            if n + room > self.max_context:
                raise InvalidInputError(
                    f"prompt {i} has {n} tokens and the output needs up to {room} more, over the "
                    f"model's context of {self.max_context}; shorten the input or lower max_new_tokens"
                )
        return {k: v.to(self.device) for k, v in batch.items()}

    # -- constraints ---------------------------------------------------------------------------

    def index_for(self, regex: str) -> Index:
        """The compiled constraint index for ``regex``, built once and cached."""
        with self._lock:
            index = self._indexes.get(regex)
            if index is None:
                if self._vocabulary is None:
                    self._vocabulary = build_vocabulary(self.tokenizer)
                try:
                    index = Index(regex, self._vocabulary)
                except ValueError as exc:
                    raise OutputTypeError(f"cannot build a decoding constraint: {exc}") from exc
                self._indexes[regex] = index
            return index

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        spec: OutputSpec | None = None,
        settings: GenerationSettings | None = None,
        *,
        processor: LogitsProcessor | None = None,
        default_budget: int = 256,
    ) -> list[Generation]:
        """Generate one output per prompt in one batched call.

        Decoding follows ``spec``'s regex, or a custom ``processor`` (span grammars), or is free.
        """
        settings = settings or GenerationSettings()
        budget = settings.max_new_tokens or (spec.default_max_new_tokens if spec else default_budget)
        eos = self.tokenizer.eos_token_id
        index = self.index_for(spec.regex) if spec is not None else None
        with self._lock:
            inputs = self.encode(prompts, room=budget)
            processors = LogitsProcessorList()
            if index is not None:
                processors.append(GuidedLogitsProcessor(index, eos))
            if processor is not None:
                processors.append(processor)
            sampling = settings.temperature > 0
            if sampling:
                # Warpers after the mask, so top-p picks among allowed tokens only.
                processors.append(TemperatureLogitsWarper(settings.temperature))
                if settings.top_p < 1.0:
                    processors.append(TopPLogitsWarper(settings.top_p))
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
            config = GenerationConfig(
                max_new_tokens=budget,
                do_sample=sampling,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
            with torch.inference_mode():
                out = self.hf_model.generate(
                    **inputs,
                    generation_config=config,
                    logits_processor=processors,
                )
        new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
        # out.scores holds the processed (masked) logits of each step; one step at a time keeps
        # memory at one (batch x vocabulary) tensor.
        per_step = [
            (step.float().gather(1, new_tokens[:, t, None]) - step.float().logsumexp(1, keepdim=True))[:, 0]
            for t, step in enumerate(out.scores)
        ]
        logprobs = torch.stack(per_step, dim=1).tolist()
        rows = new_tokens.tolist()
        return [self._finish(row, lp, eos, index) for row, lp in zip(rows, logprobs, strict=True)]

    def _finish(self, row: list[int], logprobs: list[float], eos: int, index: Index | None) -> Generation:
        if eos in row:
            n = row.index(eos)
            complete = True
        else:
            n = len(row)
            # The output may be complete exactly at the budget, with no room left for EOS.
            complete = index is not None and replay_is_complete(index, row)
        text = self.tokenizer.decode(row[:n], skip_special_tokens=False)
        return Generation(text, tuple(row[:n]), complete, tuple(logprobs[: n + complete]))

    def vocabulary_trie(self) -> VocabularyTrie:
        """Character trie of the vocabulary for span-constrained decoding, built once."""
        with self._lock:
            if self._trie is None:
                self._trie = VocabularyTrie(self.tokenizer)
            return self._trie


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
    trust_remote_code: bool = False,
) -> LocalModel:
    """Load a local decoder model: a transformers directory, a GGUF file, or None for the default.

    ``device_map`` goes to accelerate ("auto" spreads layers over the GPUs there are, within
    ``max_memory``); by default the model goes on the first GPU if there is one, else the CPU.
    ``dtype="auto"`` picks bf16 on GPUs (fp16 where bf16 is missing) and fp32 on CPUs.

    >>> model = load_model()                               # SmolLM2-135M-Instruct, embedded
    >>> model = load_model("path/to/model.gguf", dtype="float32")
    """
    source_info = resolve_source(source)
    directory = weights_dir(source_info)
    on_gpu = torch.cuda.is_available()
    if device_map is None and max_memory is not None:
        device_map = "auto"
    if device_map is None:
        device_map = {"": 0} if on_gpu else {"": "cpu"}
    torch_dtype = pick_dtype(dtype, "cuda" if on_gpu else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, trust_remote_code=trust_remote_code, local_files_only=True
        )
        hf_model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=torch_dtype,
            device_map=device_map,
            max_memory=max_memory,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=True,
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"{directory} needs custom code from the model repository; pass "
                "trust_remote_code=True only if you trust it"
            ) from exc
        raise ModelLoadError(f"could not load {directory}: {exc}") from exc
    return LocalModel(hf_model, tokenizer, name=source_info.name)
