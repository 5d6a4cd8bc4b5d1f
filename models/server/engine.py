"""``ServerEngine``: castline's chains on an OpenAI-compatible server (vLLM), behind the engine seam.

When one process is not enough, the model runs in a serving engine and castline is its client,
with the same chains and the same typed results:

- **prompts** are formatted and tokenized here, with the model's own tokenizer and chat template
  loaded from the same local directory the server serves, and sent as token ids -- token counts,
  windows and literal user text are exactly what the server sees. On connect, the server's own
  tokenization of a chat prompt is compared with ours; a mismatch is a ``ModelLoadError``;
- **constraints** become request fields (``castline.models.server.translate``); on connect one
  tiny request checks that the server honours them, so a server that silently ignores them fails
  loudly instead of returning unconstrained text;
- **spans** need castline's logits-processor plugin on the server (``vllm_spans``); the client
  replays every returned token through the same span rule, so output the rule forbids is an error,
  never an entity. Without the plugin the engine lacks ``Capability.SPANS`` and span chains are
  refused when built;
- **label scores** are prompt log-probs of each label continuation (``prompt_logprobs``), read
  without any constraint -- log-probs under a grammar are renormalised and never used;
- **adapters** are castline's PEFT folders, checked here as for in-process engines and loaded into
  the server's multi-LoRA at run time (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), then chosen per
  request by name.

Requests of a batch are in flight together (``ServerClient``), so the server batches them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from castline.models.adapter_files import already_loaded, check_finite, read_adapter_files
from castline.models.hf_tokenizer import HFTokenizerText
from castline.models.loading import resolve_source, weights_dir
from castline.models.protocol import (
    AdapterInfo,
    Capability,
    Constraint,
    Continuation,
    Engine,
    Generation,
    GenerationRequest,
    Prompt,
    SpanConstraint,
    SpanMatch,
    prompt_too_long,
)
from castline.models.server.client import ServerClient
from castline.models.server.translate import SPANS_XARG, constraint_fields
from castline.models.token_trie import TokenTrie
from castline.schemas.errors import (
    CastlineError,
    InvalidInputError,
    ModelLoadError,
    ModelOutputError,
    OutputTypeError,
    ServerError,
)
from castline.schemas.output_types import OutputSpec

API_KEY_ENV = "CASTLINE_API_KEY"
BASE_URL_ENV = "CASTLINE_BASE_URL"
CONSTRAINT_CHECK = "castline-ok"
MAX_LOGPROB_IDS = 128  # vLLM's limit on logprob_token_ids per request
SCORING = ("trie", "prompt_logprobs")
_BASE_CAPABILITIES = frozenset({Capability.GRAMMAR, Capability.SCORE, Capability.ADAPTERS})


class ServerEngine(HFTokenizerText, Engine):
    """A model served over HTTP by vLLM (or another server with the same API).

    >>> engine = load_model(engine="openai", base_url="http://localhost:8000", model="smollm2")
    """

    engine_name: ClassVar[str] = "openai"

    def __init__(
        self,
        client: ServerClient,
        model: str,
        tokenizer: Any,
        name: str,
        max_context: int,
        spans: bool,
        scoring: str = "trie",
    ) -> None:
        super().__init__()
        self.client = client
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = max_context
        self.capabilities = _BASE_CAPABILITIES | ({Capability.SPANS} if spans else set())
        if scoring not in SCORING:
            raise InvalidInputError(f"scoring must be one of {list(SCORING)}, not {scoring!r}")
        self.scoring = scoring

    def __repr__(self) -> str:
        return f"ServerEngine({self.client.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        self.client.close()

    def prepare(self, constraint: Constraint) -> None:
        """Refuse, when the chain is built, a constraint the server cannot be sent (a non-portable regex)."""
        constraint_fields(constraint)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | CastlineError]:
        results: list[Generation | CastlineError | None] = [None] * len(requests)
        payloads, sent = [], []
        for i, request in enumerate(requests):
            self.check_adapter(request.adapter)
            ids = self.encode_prompt(request.prompt)
            if len(ids) + request.max_new_tokens > self.max_context:
                results[i] = prompt_too_long(len(ids), request.max_new_tokens, self.max_context)
                continue
            if isinstance(request.constraint, SpanConstraint):
                self.require(Capability.SPANS, "span decoding")
            try:
                fields = constraint_fields(request.constraint)
            except OutputTypeError as exc:
                results[i] = exc
                continue
            payloads.append(self._completion(ids, request, fields))
            sent.append(i)
        for i, answer in zip(sent, self._complete(payloads), strict=True):
            results[i] = answer if isinstance(answer, CastlineError) else self._finish(answer, requests[i])
        assert all(r is not None for r in results)  # every request got a generation or its error
        return results  # type: ignore[return-value]

    def _completion(
        self, ids: list[int], request: GenerationRequest, fields: dict[str, Any]
    ) -> dict[str, Any]:
        settings = request.settings
        payload = {
            "model": request.adapter or self.model,
            "prompt": ids,
            "max_tokens": request.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "stop_token_ids": [self.eos_id],
            "logprobs": 0,
            "return_token_ids": True,
            **fields,
        }
        if settings.seed is not None:
            payload["seed"] = settings.seed
        return payload

    def _complete(self, payloads: list[dict[str, Any]]) -> list[Any | CastlineError]:
        """Send completions; requests for an adapter the server lost are sent again after reloading it.

        A restarted server has forgotten the adapters loaded at run time and answers 404 for them.
        """
        answers = self.client.post_many("/v1/completions", payloads)
        lost = {
            p["model"]
            for p, a in zip(payloads, answers, strict=True)
            if isinstance(a, ServerError) and a.status == 404 and p["model"] in self.adapters
        }
        if not lost:
            return answers
        for name in lost:
            self._load_on_server(self.adapters[name])
        again = [
            k for k, p in enumerate(payloads) if p["model"] in lost and isinstance(answers[k], ServerError)
        ]
        resent = self.client.post_many("/v1/completions", [payloads[k] for k in again])
        for k, answer in zip(again, resent, strict=True):
            answers[k] = answer
        return answers

    def _finish(self, answer: Any, request: GenerationRequest) -> Generation | CastlineError:
        try:
            choice = answer["choices"][0]
            tokens = [int(t) for t in choice["token_ids"]]
            logprobs = [float(x) for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
            finish = choice["finish_reason"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return ServerError(f"the server's completion is not in the expected form ({exc!r})")
        ended = bool(tokens) and tokens[-1] == self.eos_id
        body = tokens[:-1] if ended else tokens
        text = self.token_table.decode(body)
        constraint = request.constraint
        spans: tuple[SpanMatch, ...] = ()
        if isinstance(constraint, SpanConstraint):
            replayed = self._replay_spans(constraint, tokens, text)
            if isinstance(replayed, CastlineError):
                return replayed
            spans = replayed
        elif isinstance(constraint, OutputSpec) and finish == "stop":
            mismatch = _check_server_constraint(constraint, text)
            if mismatch is not None:
                return mismatch
        return Generation(text, tuple(body), finish == "stop", tuple(logprobs[: len(tokens)]), spans)

    def _replay_spans(
        self, rule: SpanConstraint, tokens: list[int], text: str
    ) -> tuple[SpanMatch, ...] | CastlineError:
        """The spans ``tokens`` spell under the span rule, or an error if the rule forbids one."""
        cursor = self.token_table.cursor(rule)
        assert cursor is not None
        for token in tokens:
            if token not in cursor.allowed():  # type: ignore[union-attr]
                return ModelOutputError(
                    "the server returned tokens the span rule forbids; is castline's logits-processor "
                    "plugin loaded (--logits-processors castline.models.server.vllm_spans:CastlineSpans)?",
                    text,
                )
            cursor.advance(token)
        return tuple(SpanMatch(*s) for s in cursor.spans())

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Continuation], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probs of every continuation after every prompt; all requests in flight together.

        ``scoring="trie"`` (default): one request per prompt and label-trie node, reading the raw
        log-probs of the node's children (``logprob_token_ids``) at one generated step -- prefixes
        stay in the server's prefix cache. ``scoring="prompt_logprobs"``: one request per (prompt,
        label) reading prompt log-probs; vLLM recomputes the whole prompt for each, and its CPU
        build crashes on it with ``--enable-lora``.
        """
        self.check_adapter(adapter)
        endings = [self.continuation_ids(c.text, c.end_of_turn) for c in continuations]
        starts = [self.encode_prompt(p) for p in prompts]
        longest = max((len(e) for e in endings), default=0)
        for ids in starts:
            if len(ids) + longest > self.max_context:
                raise prompt_too_long(len(ids), longest, self.max_context)
        model = adapter or self.model
        if self.scoring == "prompt_logprobs":
            return self._score_by_prompt_logprobs(model, starts, endings)
        return self._score_by_trie(model, starts, endings)

    def _score_by_trie(
        self, model: str, starts: list[list[int]], endings: list[list[int]]
    ) -> list[list[float]]:
        trie = TokenTrie.build(endings)
        children: dict[int, list[int]] = {}
        for node, parent in enumerate(trie.parents):
            children.setdefault(parent, []).append(node)
        asks = [  # (prompt index, child nodes asked about, request)
            (
                i,
                chunk,
                {
                    "model": model,
                    "prompt": start + _trie_prefix(trie, parent),
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": 0,
                    "logprob_token_ids": [trie.tokens[n] for n in chunk],
                    "return_tokens_as_token_ids": True,
                },
            )
            for i, start in enumerate(starts)
            for parent, nodes in children.items()
            for chunk in _chunks(nodes, MAX_LOGPROB_IDS)
        ]
        node_logprobs = [[0.0] * len(trie) for _ in starts]
        answers = self._complete([request for _, _, request in asks])
        for (i, chunk, _), answer in zip(asks, answers, strict=True):
            if isinstance(answer, CastlineError):
                raise answer
            try:
                found = answer["choices"][0]["logprobs"]["top_logprobs"][0]
                for node in chunk:
                    node_logprobs[i][node] = float(found[f"token_id:{trie.tokens[node]}"])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ServerError(
                    f"the server's answer lacks the asked token log-probs ({exc!r}); castline's label "
                    "scoring needs vLLM's logprob_token_ids"
                ) from exc
        return [[sum(row[n] for n in path) for path in trie.paths] for row in node_logprobs]

    def _score_by_prompt_logprobs(
        self, model: str, starts: list[list[int]], endings: list[list[int]]
    ) -> list[list[float]]:
        payloads = [
            {
                "model": model,
                "prompt": start + ending,
                "max_tokens": 1,
                "temperature": 0,
                "prompt_logprobs": 0,
            }
            for start in starts
            for ending in endings
        ]
        answers = iter(self._complete(payloads))
        return [
            [_continuation_logprob(next(answers), len(start), ending) for ending in endings]
            for start in starts
        ]

    # -- adapters ------------------------------------------------------------------------------

    def load_adapter(self, directory: str | os.PathLike[str], name: str | None = None) -> AdapterInfo:
        """Check a castline adapter folder here, then load it into the server under ``name``.

        The server reads the folder itself, so it must see the same path (same machine or a
        shared volume). The default name carries the weights' hash: one name, one set of weights.
        """
        files = read_adapter_files(directory)
        name = name or files.default_name()
        loaded = already_loaded(files, name, self.adapters, self.name)
        if loaded is not None:
            return loaded
        _check_weights(files)
        info = AdapterInfo(name, files.directory, files.content_hash, files.metadata)
        self._load_on_server(info)
        self.adapters[name] = info
        return info

    def _load_on_server(self, info: AdapterInfo) -> None:
        assert info.path is not None
        answer = self.client.try_post(
            "/v1/load_lora_adapter", {"lora_name": info.name, "lora_path": str(info.path.resolve())}
        )
        if isinstance(answer, ServerError) and not (answer.status == 400 and "already" in str(answer)):
            raise ModelLoadError(
                f"the server did not load adapter {info.path} as {info.name!r}: {answer}. It needs "
                "--enable-lora (with --max-lora-rank ≥ the adapter's rank) and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and must see the folder at the same path"
            )


def _check_weights(files: Any) -> None:
    """Damaged or non-finite adapter weights are refused here, before the server sees them."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(files.weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{files.weights} is not a readable safetensors file ({exc})") from exc
    for key, values in tensors.items():
        check_finite(files, key, values)


def _check_server_constraint(spec: OutputSpec, text: str) -> CastlineError | None:
    """Labels and regexes are checked here too: a server that dropped a constraint is caught."""
    if spec.kind == "labels" and text not in spec.labels:
        return ModelOutputError(
            f"the server returned {text!r}, not one of the labels; it ignored the constraint", text
        )
    if spec.kind == "regex" and re.fullmatch(spec.regex, text) is None:
        return ModelOutputError(f"the server returned {text!r}, which does not match {spec.regex!r}", text)
    return None


def _trie_prefix(trie: TokenTrie, node: int) -> list[int]:
    """The tokens from the root down to ``node`` (none for the root, -1)."""
    tokens = []
    while node != -1:
        tokens.append(trie.tokens[node])
        node = trie.parents[node]
    return tokens[::-1]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def _continuation_logprob(answer: Any, start: int, ending: list[int]) -> float:
    if isinstance(answer, CastlineError):
        raise answer
    try:
        rows = answer["choices"][0]["prompt_logprobs"]
        return sum(float(rows[start + k][str(token)]["logprob"]) for k, token in enumerate(ending))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ServerError(
            f"the server's answer has no prompt log-probs for the label tokens ({exc!r}); castline needs "
            "a server that returns prompt_logprobs (vLLM)"
        ) from exc


# -- connecting ------------------------------------------------------------------------------------


def load_server(
    source: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = API_KEY_ENV,
    timeout: float = 120.0,
    max_in_flight: int = 32,
    retries: int = 4,
    scoring: str = "trie",
    **client_options: Any,
) -> ServerEngine:
    """Connect to a server at ``base_url`` that serves ``source`` (default: the embedded model).

    ``source`` is the same local model the server was started on (a directory or GGUF, or None
    for the embedded SmolLM2, served from ``castline.models.loading.weights_dir``), or a directory
    holding just its tokenizer files: its tokenizer and chat template are loaded here. ``model`` is
    the served model name (default: the server's only base model). The API key, if any, is read
    from ``$CASTLINE_API_KEY`` (or the variable ``api_key_env`` names) and never logged;
    ``base_url`` defaults to ``$CASTLINE_BASE_URL``. ``scoring`` is "trie" or "prompt_logprobs"
    (``ServerEngine.score``).
    """
    from transformers import AutoTokenizer

    base_url = base_url or os.environ.get(BASE_URL_ENV)
    if not base_url:
        raise ModelLoadError(
            f"the openai engine needs base_url= (or ${BASE_URL_ENV}), e.g. http://localhost:8000"
        )
    directory, name = _tokenizer_source(source)
    client = ServerClient(
        base_url,
        api_key=os.environ.get(api_key_env) or None,
        timeout=timeout,
        max_in_flight=max_in_flight,
        retries=retries,
        **client_options,
    )
    try:
        served = _served_model(client, model)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        max_context = _context_length(served, directory)
        engine = ServerEngine(
            client, served["id"], tokenizer, name, max_context, spans=False, scoring=scoring
        )
        _check_tokenizer(engine)
        _check_constraints(engine)
        engine.capabilities = engine.capabilities | (
            {Capability.SPANS} if _has_span_plugin(engine) else set()
        )
        return engine
    except BaseException:
        client.close()
        raise


def _tokenizer_source(source: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The directory to load the tokenizer from, and the model's identity (recorded with adapters).

    The weights stay on the server: a directory holding only the tokenizer files is enough.
    """
    if source is not None:
        path = Path(source).expanduser()
        if (
            path.is_dir()
            and (path / "tokenizer_config.json").is_file()
            and not any(path.glob("*.safetensors"))
        ):
            return path, path.name
    source_info = resolve_source(source)
    return weights_dir(source_info), source_info.name


def _served_model(client: ServerClient, model: str | None) -> dict[str, Any]:
    try:
        listing = client.get("/v1/models")
    except ServerError as exc:
        raise ModelLoadError(f"cannot list the models of {client.base_url}: {exc}") from exc
    entries = [m for m in listing.get("data", []) if isinstance(m, dict) and "id" in m]
    bases = [m for m in entries if not m.get("parent")]
    if model is None:
        if len(bases) != 1:
            raise ModelLoadError(
                f"{client.base_url} serves {[m['id'] for m in bases]}; pass model=<one of them>"
            )
        return bases[0]
    for entry in entries:
        if entry["id"] == model:
            return entry
    raise ModelLoadError(
        f"{client.base_url} does not serve {model!r}; it serves {[m['id'] for m in entries]}"
    )


def _context_length(served: dict[str, Any], directory: Any) -> int:
    """The server's context (vLLM lists it), else the model config's."""
    if isinstance(served.get("max_model_len"), int):
        return int(served["max_model_len"])
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
        return int(config["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return 2048


def _check_tokenizer(engine: ServerEngine) -> None:
    """The server must tokenize a chat prompt exactly as the local tokenizer does."""
    messages = [{"role": "user", "content": "castline check: Zürich 東京 😀 <b>x</b>"}]
    ours = engine.encode_prompt(engine.chat_prompt(messages))
    try:
        theirs = engine.client.post(
            "/tokenize", {"model": engine.model, "messages": messages, "add_generation_prompt": True}
        )["tokens"]
    except ServerError as exc:
        if exc.status == 404:
            return  # not a vLLM server: no tokenize endpoint to compare with
        raise ModelLoadError(f"cannot check the server's tokenizer: {exc}") from exc
    if list(theirs) != ours:
        raise ModelLoadError(
            f"the server tokenizes a chat prompt differently from the local model ({len(theirs)} vs "
            f"{len(ours)} tokens); pass the model directory the server was started with"
        )


def _check_constraints(engine: ServerEngine) -> None:
    """One tiny request: a server that ignores ``structured_outputs`` must not pass for one that doesn't."""
    prompt = engine.chat_prompt([{"role": "user", "content": "Say hello."}])
    probe = GenerationRequest(prompt, max_new_tokens=32)
    payload = engine._completion(
        engine.encode_prompt(prompt), probe, {"structured_outputs": {"choice": [CONSTRAINT_CHECK]}}
    )
    try:
        answer = engine.client.post("/v1/completions", payload)
        text = engine.token_table.decode(t for t in answer["choices"][0]["token_ids"] if t != engine.eos_id)
    except (ServerError, KeyError, IndexError, TypeError) as exc:
        raise ModelLoadError(f"{engine.client.base_url} failed a constrained request: {exc}") from exc
    if text != CONSTRAINT_CHECK:
        raise ModelLoadError(
            f"{engine.client.base_url} ignored a structured_outputs constraint (returned {text[:60]!r}); "
            "castline needs a server that honours structured_outputs (vLLM ≥ 0.12)"
        )


def _has_span_plugin(engine: ServerEngine) -> bool:
    """Whether the server runs castline's span plugin: it refuses a malformed span rule with 400."""
    payload = {
        "model": engine.model,
        "prompt": [engine.eos_id],
        "max_tokens": 1,
        "vllm_xargs": {SPANS_XARG: "{"},
    }
    try:
        engine.client.post("/v1/completions", payload)
    except ServerError as exc:
        return exc.status == 400 and "castline" in str(exc)
    return False
