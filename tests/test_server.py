"""The server engine: HTTP faults and a server that misbehaves (a scripted transport), then a real
vLLM server (marked ``server``): the same label probabilities as in-process, adapters, the plugin.

The conformance suite of the seam runs on the real server too (``tests/test_engines.py``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import numpy as np
import pytest

from castline.chains import Classify, RecognizeEntities, StructuredChain
from castline.models import Continuation, GenerationRequest, SpanConstraint
from castline.models.server import ServerEngine, load_server
from castline.models.server.client import ServerClient
from castline.models.server.translate import portable_regex, span_from_json, span_to_json
from castline.schemas import (
    EngineCapabilityError,
    ModelLoadError,
    ModelOutputError,
    OutputTypeError,
    Regex,
    ServerError,
    output_spec,
)

# -- the HTTP client -------------------------------------------------------------------------------


def client_with(handler, **options) -> ServerClient:
    options = {"retries": 3, "backoff": 0.0, **options}
    return ServerClient("http://server.test", transport=httpx.MockTransport(handler), **options)


def test_transient_failures_are_retried_until_the_server_answers():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503 if len(calls) < 3 else 200, json={"ok": len(calls)})

    assert client_with(handler).post("/v1/completions", {}) == {"ok": 3}


def test_a_request_the_server_refuses_is_not_retried_and_keeps_its_message():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(400, json={"error": {"message": "prompt too long for this model"}})

    with pytest.raises(ServerError, match="HTTP 400: prompt too long") as info:
        client_with(handler).post("/v1/completions", {})
    assert info.value.status == 400 and len(calls) == 1


@pytest.mark.parametrize(
    ("fault", "message"),
    [(httpx.ConnectError("refused"), "cannot reach"), (httpx.ReadTimeout("slow"), "timed out")],
)
def test_a_server_down_or_too_slow_is_a_typed_error_after_the_retries(fault, message):
    calls = []

    def handler(request):
        calls.append(request)
        raise fault

    with pytest.raises(ServerError, match=f"{message}.*after 4 attempts"):
        client_with(handler).get("/v1/models")
    assert len(calls) == 4


def test_a_server_restarting_mid_batch_loses_no_item():
    calls = []

    def handler(request):
        calls.append(request)
        if 3 <= len(calls) <= 5:  # down for a moment
            raise httpx.ConnectError("restarting")
        return httpx.Response(200, json=json.loads(request.content))

    answers = client_with(handler).post_many("/v1/completions", [{"i": i} for i in range(6)])
    assert answers == [{"i": i} for i in range(6)]


def test_a_batch_keeps_order_isolates_failures_and_bounds_requests_in_flight():
    open_now, most = 0, 0

    async def handler(request):
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.01)
        open_now -= 1
        payload = json.loads(request.content)
        if payload["i"] == 5:
            return httpx.Response(422, json={"message": "bad item"})
        return httpx.Response(200, json=payload)

    answers = client_with(handler, max_in_flight=4).post_many(
        "/v1/completions", [{"i": i} for i in range(20)]
    )
    assert [a["i"] for k, a in enumerate(answers) if k != 5] == [i for i in range(20) if i != 5]
    assert isinstance(answers[5], ServerError) and "bad item" in str(answers[5])
    assert 1 < most <= 4


# -- a scripted server: what the engine checks on connect and on every answer ---------------------


class ScriptedServer:
    """A vLLM-shaped server built on the embedded tokenizer: honest unless told otherwise."""

    def __init__(self, tokenizer, *, honours_constraints=True, reply=None, plugin=False):
        self.tokenizer = tokenizer
        self.honours_constraints = honours_constraints
        self.reply = reply
        self.plugin = plugin
        self.headers: list[httpx.Headers] = []
        self.adapters: set[str] = set()  # loaded at run time; a restart forgets them
        self.adapter_loads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(
                200, json={"data": [{"id": "smollm2", "parent": None, "max_model_len": 2048}]}
            )
        body = json.loads(request.content)
        if path == "/v1/load_lora_adapter":
            self.adapters.add(body["lora_name"])
            self.adapter_loads += 1
            return httpx.Response(200, text="Success")
        if body.get("model", "smollm2") not in {"smollm2", *self.adapters}:
            return httpx.Response(
                404, json={"error": {"message": f"The model `{body['model']}` does not exist."}}
            )
        if path == "/tokenize":
            text = self.tokenizer.apply_chat_template(
                body["messages"], add_generation_prompt=True, tokenize=False
            )
            return httpx.Response(
                200, json={"tokens": self.tokenizer(text, add_special_tokens=False).input_ids}
            )
        if "castline_spans" in body.get("vllm_xargs", {}) and self.plugin:
            try:
                span_from_json(body["vllm_xargs"]["castline_spans"])
            except ValueError as exc:
                return httpx.Response(400, json={"error": {"message": str(exc)}})
        choice = (body.get("structured_outputs") or {}).get("choice")
        text = choice[0] if choice and self.honours_constraints else (self.reply or "Hello there!")
        ids = [*self.tokenizer(text, add_special_tokens=False).input_ids, self.tokenizer.eos_token_id]
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "token_ids": ids,
                        "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-0.1] * len(ids)},
                    }
                ]
            },
        )


def connect(server: ScriptedServer, **options) -> ServerEngine:
    return load_server(
        base_url="http://server.test", transport=httpx.MockTransport(server), retries=0, **options
    )


def test_a_server_that_ignores_constraints_is_refused_on_connect(tokenizer):
    with pytest.raises(ModelLoadError, match="ignored a structured_outputs constraint"):
        connect(ScriptedServer(tokenizer, honours_constraints=False))


def test_a_server_with_another_tokenizer_is_refused_on_connect(tokenizer):
    server = ScriptedServer(tokenizer)
    real = server.__call__

    def other_tokenizer(request):
        answer = real(request)
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": answer.json()["tokens"][1:]})
        return answer

    with pytest.raises(ModelLoadError, match="tokenizes a chat prompt differently"):
        load_server(base_url="http://server.test", transport=httpx.MockTransport(other_tokenizer))


def test_without_the_span_plugin_span_chains_are_refused_when_built(tokenizer):
    engine = connect(ScriptedServer(tokenizer, plugin=False))
    with pytest.raises(EngineCapabilityError, match="spans"):
        RecognizeEntities(["person"], model=engine)
    assert Classify(["a", "b"], model=engine)  # what the server can do still works


def test_tokens_the_span_rule_forbids_are_an_error_not_an_entity(tokenizer):
    """A server that claims the plugin but returns free text: the client's replay catches it."""
    engine = connect(ScriptedServer(tokenizer, plugin=True, reply="Ada Lovelace"))
    prompt = engine.chat_prompt([{"role": "user", "content": "Who?"}])
    [result] = engine.generate([GenerationRequest(prompt, SpanConstraint("Charles met Grace."))])
    assert isinstance(result, ModelOutputError) and "span rule forbids" in str(result)


def test_a_label_the_server_did_not_constrain_is_an_error(tokenizer):
    engine = connect(ScriptedServer(tokenizer))
    engine.client = client_with(ScriptedServer(tokenizer, honours_constraints=False, reply="maybe"))
    chain = StructuredChain(Literal["yes", "no"], model=engine)
    assert isinstance(chain.batch(["Is it?"], return_exceptions=True)[0], ModelOutputError)


def test_adapters_a_restarted_server_forgot_are_loaded_again(tokenizer, tmp_path):
    from safetensors.numpy import save_file

    scripted = ScriptedServer(tokenizer)
    engine = connect(scripted)
    folder = tmp_path / "adapter"
    folder.mkdir()
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({key: np.ones((8, 576), np.float32)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "castline.json").write_text(json.dumps({"base_model": engine.name}))
    name = engine.load_adapter(folder).name
    scripted.adapters.clear()  # the server restarted
    prompt = engine.chat_prompt([{"role": "user", "content": "a or b?"}])
    [result] = engine.generate([GenerationRequest(prompt, output_spec(Literal["a", "b"]), adapter=name)])
    assert result.text == "a" and scripted.adapter_loads == 2


def test_the_api_key_is_sent_but_never_shown(tokenizer, monkeypatch):
    monkeypatch.setenv("CASTLINE_API_KEY", "sk-secret-123")
    server = ScriptedServer(tokenizer)
    engine = connect(server)
    assert all(h["authorization"] == "Bearer sk-secret-123" for h in server.headers)
    assert "sk-secret" not in repr(engine) + repr(engine.client)
    with pytest.raises(ServerError) as info:
        client_with(lambda r: httpx.Response(401, json={"error": {"message": "bad key"}})).get("/v1/models")
    assert "sk-secret" not in str(info.value)


def test_a_directory_with_only_the_tokenizer_is_enough(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "smollm2-tokenizer")
    server = ScriptedServer(tokenizer)
    engine = load_server(
        tmp_path / "smollm2-tokenizer", base_url="http://server.test", transport=httpx.MockTransport(server)
    )
    assert engine.name == "smollm2-tokenizer" and engine.max_context == 2048


def test_no_base_url_is_a_typed_error(monkeypatch):
    monkeypatch.delenv("CASTLINE_BASE_URL", raising=False)
    with pytest.raises(ModelLoadError, match="base_url"):
        load_server()


@pytest.mark.parametrize("pattern", [r"\d{3}", r"\w+", r"a(?=b)", r"(?P<x>a)", r"(?i)abc", r"\bword"])
def test_regexes_the_server_reads_differently_are_refused(pattern):
    with pytest.raises(OutputTypeError):
        portable_regex(pattern)


@pytest.mark.parametrize("pattern", [r"[0-9]{3}(?:-[0-9]{4})?", r"a\.b\-c", r"(yes|no)", r"[^\n]+"])
def test_portable_regexes_are_sent_unchanged(pattern):
    assert portable_regex(pattern) == pattern


def test_span_rules_survive_the_trip_to_the_plugin():
    rule = SpanConstraint("東京 😀 and Zürich", ("city", "x"), True, frozenset({"x"}), 12)
    assert span_from_json(span_to_json(rule)) == rule
    with pytest.raises(ValueError, match="castline"):
        span_from_json("{")


# -- a real vLLM server ----------------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.server
def test_label_probabilities_equal_in_process_ones(server_model, real_model):
    """Same fp32 weights: the server's label probabilities equal the transformers engine's."""
    labels = ["billing", "card_arrival", "card", "lost or stolen card", "refund 💳"]
    texts = ["My card still has not arrived.", "I was charged twice!", "Zürich branch 東京?"]
    on_server = Classify(labels, model=server_model).batch(texts)
    in_process = Classify(labels, model=real_model).batch(texts)
    for a, b in zip(on_server, in_process, strict=True):
        assert a.label == b.label
        for label in labels:
            assert a.probabilities[label] == pytest.approx(b.probabilities[label], abs=1e-3)


@pytest.mark.real_model
@pytest.mark.server
def test_entities_and_their_scores_equal_in_process_ones(server_model, real_model):
    """The span plugin decodes what the in-process rule does; scores are read after its mask."""
    texts = ["東京 and Zürich are cities; Rick and Morty 😂", "Grace Hopper worked at Harvard on the Mark I."]
    on_server = RecognizeEntities(["person", "location"], model=server_model).batch(texts)
    in_process = RecognizeEntities(["person", "location"], model=real_model).batch(texts)
    assert any(result.entities for result in in_process)
    for a, b in zip(on_server, in_process, strict=True):
        assert [(e.text, e.label, e.start, e.end) for e in a.entities] == [
            (e.text, e.label, e.start, e.end) for e in b.entities
        ]
        assert [e.score for e in a.entities] == pytest.approx([e.score for e in b.entities], abs=1e-3)


@pytest.mark.real_model
@pytest.mark.server
def test_adapters_run_on_the_server_as_in_process(server_model, real_model, embedded_adapter):
    messages = [{"role": "user", "content": "Hello, are you free tomorrow?"}]
    labels = [Continuation("spam"), Continuation("ham"), Continuation("maybe later")]
    served = server_model.load_adapter(embedded_adapter).name
    local = real_model.load_adapter(embedded_adapter).name
    prompt = server_model.chat_prompt(messages)
    base = server_model.score([prompt], labels)[0]
    adapted = server_model.score([prompt], labels, served)[0]
    expected = real_model.score([real_model.chat_prompt(messages)], labels, local)[0]
    assert max(abs(a - b) for a, b in zip(adapted, base, strict=True)) > 1  # the adapter acts
    assert adapted == pytest.approx(expected, abs=0.05)
    assert server_model.load_adapter(embedded_adapter).name == served  # same weights, same name
    with pytest.raises(EngineCapabilityError, match="no adapter named"):
        server_model.score([prompt], labels, "never-loaded")


@pytest.mark.real_model
@pytest.mark.server
def test_the_span_plugin_refuses_a_malformed_rule_and_leaves_other_requests_alone(server_model):
    with pytest.raises(ServerError, match="castline span constraint"):
        server_model.client.post(
            "/v1/completions",
            {"model": "smollm2", "prompt": [1, 2], "max_tokens": 1, "vllm_xargs": {"castline_spans": "{"}},
        )
    ner = RecognizeEntities(["person", "city"], model=server_model, max_new_tokens=40)
    text = "Grace Hopper flew from New York to 東京 😀 yesterday."
    for entity in ner.invoke(text).entities:
        assert text[entity.start : entity.end] == entity.text and entity.start < entity.end
    assert StructuredChain(Regex(r"[0-9]{4}"), model=server_model).invoke("A year?").isdigit()
