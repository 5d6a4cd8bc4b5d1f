"""``TransformersEngine``: a Hugging Face decoder loaded in this process, behind the engine seam.

accelerate places the model on the GPUs there are (or the CPU); this is the engine for GPUs and
the only one that trains adapters. Batches are real batches: prompts are left-padded and go
through one ``generate`` call per group of requests sharing settings, budget and adapter; every
row follows its own constraint cursor (``castline.models.decoding``). Compiled grammars are
cached per regex. Calls are serialised by a lock: the weights and the active adapter are shared,
and two generate calls at once on a small CPU are slower than in turn.

Label scoring (``score``) walks all continuations as one token trie per prompt with the prompts'
shared prefix computed once (``castline.models.transformers.scoring``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
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

from castline.models.decoding import Cursor
from castline.models.hf_tokenizer import HFTokenizerText
from castline.models.loading import pick_dtype, resolve_source, weights_dir
from castline.models.protocol import (
    AdapterInfo,
    Capability,
    Continuation,
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
    SpanMatch,
    check_real_models_allowed,
    prompt_too_long,
)
from castline.schemas.errors import CastlineError, ModelLoadError, OutputTypeError

# Model loading is serialised process-wide: concurrent from_pretrained calls have left tied output
# heads on the meta device (garbage logits while constrained outputs still validate).
_LOAD_LOCK = threading.Lock()
GENERATE_ROWS = 16  # rows per generate call; a 16-row batch ran 2.7x faster than 16 calls (make bench)


class TransformersEngine(HFTokenizerText, Engine):
    """A decoder model and its tokenizer, loaded in this process.

    >>> engine = load_model(engine="transformers")      # the embedded SmolLM2-135M-Instruct
    >>> engine.generate([GenerationRequest(engine.chat_prompt([{"role": "user", "content": "Hi"}]))])
    """

    engine_name: ClassVar[str] = "transformers"
    capabilities: frozenset[Capability] = frozenset(Capability)

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "custom"):
        super().__init__()
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = int(getattr(hf_model.config, "max_position_embeddings", 2048))
        # Left padding keeps every row's last prompt token at the same position for generation.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.eos_token_id is None:
            raise ModelLoadError(f"the tokenizer of {name} has no end-of-turn token; castline needs one")
        self._lock = threading.RLock()
        self._peft_configs: dict[str, Any] = {}
        self._active: str | None = None
        self._scoring_prefix: Any = None  # scoring's shared-prefix KV cache, reused across calls

    # -- identity ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    def __repr__(self) -> str:
        return f"TransformersEngine({self.name!r}, device={self.device}, dtype={self.dtype})"

    # -- adapters ------------------------------------------------------------------------------

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` the one used by the next calls (None: the base model alone)."""
        if adapter == self._active or (adapter is None and not self._peft_configs):
            return
        self.check_adapter(adapter)
        from peft.tuners.tuners_utils import BaseTunerLayer, set_adapter

        with self._lock:
            if adapter is not None:
                set_adapter(self.hf_model, adapter, inference_mode=True)
            for module in self.hf_model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.enable_adapters(adapter is not None)
            self._active = adapter

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[TransformersEngine]:
        """Hold the model with ``adapter`` active for a whole group of calls."""
        with self._lock:
            self.activate(adapter)
            yield self

    def load_adapter(self, directory: str | os.PathLike[str], name: str | None = None) -> AdapterInfo:
        from castline.models.transformers.adapters import load_adapter

        return load_adapter(self, Path(directory), name)

    def train_adapter(
        self, name: str, pairs: Sequence[tuple[Prompt, str]], settings: Any = None, score: Any = None
    ) -> Any:
        from castline.models.transformers.adapters import train_adapter

        return train_adapter(self, name, pairs, settings, score)

    def save_adapter(self, name: str, directory: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
        from castline.models.transformers.adapters import save_adapter

        return save_adapter(self, name, Path(directory), metadata)

    def merged(self, adapter: str) -> TransformersEngine:
        """A copy of this engine with ``adapter`` merged into its weights, for the fastest inference.

        The copy costs the memory of a second model; this engine and its adapters are unchanged.
        """
        self.check_adapter(adapter)
        import copy

        from peft.tuners.tuners_utils import BaseTunerLayer

        with self._lock:
            hf_model = copy.deepcopy(self.hf_model)
        twin = TransformersEngine(hf_model, self.tokenizer, name=self.name)
        twin.adapters = dict(self.adapters)
        twin._peft_configs = dict(self._peft_configs)
        twin.activate(adapter)
        for module in hf_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge(adapter_names=[adapter])
        return twin

    # -- generation ----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | CastlineError]:
        results: list[Generation | CastlineError | None] = [None] * len(requests)
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(requests):
            self.check_adapter(request.adapter)
            key = (request.adapter, request.settings, request.max_new_tokens)
            groups.setdefault(key, []).append(i)
        for (adapter, settings, budget), members in groups.items():
            ids = [self.encode_prompt(requests[i].prompt) for i in members]
            runnable = []
            for i, prompt_ids in zip(members, ids, strict=True):
                if len(prompt_ids) + budget > self.max_context:
                    results[i] = prompt_too_long(len(prompt_ids), budget, self.max_context)
                else:
                    runnable.append((i, prompt_ids))
            if not runnable:
                continue
            try:
                cursors = [self.token_table.cursor(requests[i].constraint) for i, _ in runnable]
            except OutputTypeError as exc:
                for i, _ in runnable:
                    results[i] = exc
                continue
            # At most GENERATE_ROWS rows per generate call: memory (KV cache, padding) stays bounded
            # however many windows a long input turns into.
            for start in range(0, len(runnable), GENERATE_ROWS):
                rows = runnable[start : start + GENERATE_ROWS]
                with self.using(adapter):
                    generations = self._generate_group(
                        [x for _, x in rows],
                        cursors[start : start + GENERATE_ROWS],
                        settings,
                        budget,
                        [requests[i].on_token for i, _ in rows],
                    )
                for (i, _), generation in zip(rows, generations, strict=True):
                    results[i] = generation
        assert all(r is not None for r in results)  # every request got a generation or its error
        return results  # type: ignore[return-value]

    def _generate_group(
        self,
        prompt_ids: list[list[int]],
        cursors: list[Cursor | None],
        settings: Any,
        budget: int,
        sinks: Sequence[Callable[[bytes], None] | None] = (),
    ) -> list[Generation]:
        width = max(len(x) for x in prompt_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompt_ids], device=self.device)
        attention = torch.tensor(
            [[0] * (width - len(x)) + [1] * len(x) for x in prompt_ids], device=self.device
        )
        constraint = _CursorMask(cursors)
        record = _ChosenLogprobs()
        processors = LogitsProcessorList([constraint, record])
        stream = _TokenStream(sinks, self.token_table.pieces, self.eos_id) if any(sinks) else None
        if stream is not None:
            processors.append(stream)
        sampling = settings.temperature > 0
        if sampling:
            # Warpers after the mask, so top-p picks among allowed tokens only; log-probs are read
            # before them, under the constrained distribution.
            processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_p < 1.0:
                processors.append(TopPLogitsWarper(settings.top_p))
        config = GenerationConfig(
            max_new_tokens=budget,
            do_sample=sampling,
            eos_token_id=self.eos_id,
            pad_token_id=pad,
            return_dict_in_generate=True,
        )
        # A seed draws from a forked generator: the process-wide one is left as it was.
        with torch.random.fork_rng(devices=[], enabled=settings.seed is not None), torch.inference_mode():
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            out = self.hf_model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                logits_processor=processors,
            )
        rows = out.sequences[:, width:].tolist()
        if stream is not None:
            stream.finish(rows)
        logprobs = record.finish(out.sequences[:, -1])
        return [
            self._finish(row, lp, cursor) for row, lp, cursor in zip(rows, logprobs, cursors, strict=True)
        ]

    def _finish(self, row: list[int], logprobs: list[float], cursor: Cursor | None) -> Generation:
        eos = self.eos_id
        n = row.index(eos) if eos in row else len(row)
        if cursor is not None:
            # generate does not call the processors after a row's last token: catch the cursor up.
            for token in row[cursor.consumed : n + 1]:
                cursor.advance(token)
        complete = eos in row or (cursor is not None and cursor.can_end())
        spans = tuple(SpanMatch(*s) for s in cursor.spans()) if cursor is not None else ()
        text = self.token_table.decode(row[:n])
        return Generation(text, tuple(row[:n]), complete, tuple(logprobs[: n + (eos in row)]), spans)

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Continuation], adapter: str | None = None
    ) -> list[list[float]]:
        from castline.models.token_trie import TokenTrie
        from castline.models.transformers.scoring import score_candidates

        self.check_adapter(adapter)
        sequences = [self.continuation_ids(c.text, c.end_of_turn) for c in continuations]
        trie = TokenTrie.build(sequences)
        with self.using(adapter):
            scores = score_candidates(self, [self.encode_prompt(p) for p in prompts], trie)
        return scores.tolist()


class _CursorMask(LogitsProcessor):
    """Masks, per row, every token its cursor does not allow; rows without a cursor are free."""

    def __init__(self, cursors: Sequence[Cursor | None]) -> None:
        self.cursors = list(cursors)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if all(c is None for c in self.cursors):
            return scores
        if self.started:
            for cursor, token in zip(self.cursors, input_ids[:, -1].tolist(), strict=True):
                if cursor is not None:
                    cursor.advance(token)
        self.started = True
        allowed = np.zeros(scores.shape, dtype=bool)
        for row, cursor in enumerate(self.cursors):
            if cursor is None or cursor.done:
                allowed[row] = True  # free, or finished (generate pads finished rows anyway)
            else:
                cursor.mask_into(allowed[row])
        masked = scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))
        return masked  # type: ignore[return-value]  # transformers annotates FloatTensor, returns Tensor


class _TokenStream(LogitsProcessor):
    """Hands each row's chosen tokens to its request's ``on_token`` while generation runs.

    A processor sees the token chosen at the previous step; ``finish`` sends the last ones, which
    generate never shows its processors.
    """

    def __init__(
        self, sinks: Sequence[Callable[[bytes], None] | None], pieces: Sequence[bytes | None], eos_id: int
    ) -> None:
        self.sinks, self.pieces, self.eos_id = list(sinks), pieces, eos_id
        self.sent = [0] * len(self.sinks)  # tokens handed over per row
        self.ended = [False] * len(self.sinks)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                self._send(row, token)
        self.started = True
        return scores

    def _send(self, row: int, token: int) -> None:
        sink = self.sinks[row]
        if sink is None or self.ended[row]:
            return
        if token == self.eos_id:
            self.ended[row] = True  # what follows is padding
            return
        self.sent[row] += 1
        sink((self.pieces[token] or b"") if token < len(self.pieces) else b"")

    def finish(self, rows: list[list[int]]) -> None:
        for row, tokens in enumerate(rows):
            for token in tokens[self.sent[row] :]:
                self._send(row, token)


class _ChosenLogprobs(LogitsProcessor):
    """Keeps the log-prob of each chosen token, holding one step's distribution at a time.

    Keeping every step's full-vocabulary scores (``output_scores``) grows with the output; this
    holds one (batch x vocabulary) tensor whatever the length.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.chosen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, input_ids[:, -1:])[:, 0])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> list[list[float]]:
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, last_tokens[:, None].to(self.previous.device))[:, 0])
            self.previous = None
        if not self.chosen:
            return []
        return torch.stack(self.chosen, dim=1).cpu().tolist()


# -- loading ---------------------------------------------------------------------------------------


def load_transformers(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: Any = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
    trust_remote_code: bool = False,
) -> TransformersEngine:
    """Load a local decoder model in this process: a transformers directory, a GGUF, or the default.

    ``device_map`` goes to accelerate ("auto" spreads layers over the GPUs there are, within
    ``max_memory``); by default the model goes on the first GPU if there is one, else the CPU.
    ``dtype="auto"`` picks bf16 on GPUs (fp16 where bf16 is missing) and fp32 on CPUs.
    """
    source_info = resolve_source(source)
    check_real_models_allowed(source_info.name)
    on_gpu = torch.cuda.is_available()
    if device_map is None and max_memory is not None:
        device_map = "auto"
    if device_map is None:
        device_map = {"": 0} if on_gpu else {"": "cpu"}
    torch_dtype = pick_dtype(dtype, "cuda" if on_gpu else "cpu")
    with _LOAD_LOCK:
        try:
            directory = weights_dir(source_info)
        except (ValueError, OSError, RuntimeError, KeyError, IndexError) as exc:
            raise ModelLoadError(
                f"{source_info.path} could not be read as a GGUF model ({type(exc).__name__}: {exc}); "
                "is it a complete GGUF file?"
            ) from exc
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
        except OSError as exc:
            raise ModelLoadError(f"could not load {directory}: {exc}") from exc
    check_loaded(hf_model, directory)
    return TransformersEngine(hf_model, tokenizer, name=source_info.name)


def check_loaded(hf_model: PreTrainedModel, directory: Path) -> None:
    """Refuse a model that loaded broken: weights left on the meta device, or untied tied weights."""
    on_meta = [n for n, p in hf_model.named_parameters() if p.device.type == "meta"]
    on_meta += [n for n, b in hf_model.named_buffers() if b.device.type == "meta"]
    if on_meta:
        raise ModelLoadError(
            f"{directory} loaded with {len(on_meta)} tensors never materialised (first: {on_meta[0]}); "
            "the checkpoint is incomplete or device_map/max_memory left no room for them"
        )
    if getattr(hf_model.config, "tie_word_embeddings", False):
        head: Any = hf_model.get_output_embeddings()
        embed: Any = hf_model.get_input_embeddings()
        untied = head is not None and embed is not None and head.weight.data_ptr() != embed.weight.data_ptr()
        if untied and not torch.equal(head.weight.detach().cpu(), embed.weight.detach().cpu()):
            raise ModelLoadError(
                f"{directory}: the output head should share the embedding weights but differs; "
                "the model loaded broken"
            )
