"""castline's span rule inside a vLLM server: a V1 logits-processor plugin.

Start the server with ``--logits-processors castline.models.server.vllm_spans:CastlineSpans``
(castline installed in the server's environment). A request that carries a span constraint in
``vllm_xargs["castline_spans"]`` then decodes only exact spans of its text, with the same rule,
vocabulary bytes and word boundaries as the in-process engines (``castline.models.decoding``);
requests without it are untouched. The client replays the returned tokens through the same rule
to find the spans, so a server without the plugin can never pass off unconstrained text.

This module imports vLLM and is only imported by the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from castline.models.decoding import SpanCursor, TokenTable
from castline.models.hf_tokenizer import token_table
from castline.models.server.translate import SPANS_XARG, span_from_json


class CastlineSpans(AdapterLogitsProcessor):
    """Masks each span request's logits to the tokens its ``SpanCursor`` allows."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        model_config = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(
            model_config.tokenizer, trust_remote_code=model_config.trust_remote_code
        )
        self.table: TokenTable = token_table(tokenizer)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        raw = (sampling_params.extra_args or {}).get(SPANS_XARG)
        if raw is not None:
            span_from_json(raw)  # a malformed rule is the request's HTTP 400

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes which token is most likely

    def new_req_logits_processor(
        self, params: SamplingParams
    ) -> Callable[[list[int], torch.Tensor], torch.Tensor] | None:
        raw = (params.extra_args or {}).get(SPANS_XARG)
        if raw is None:
            return None
        cursor = SpanCursor(span_from_json(raw), self.table)

        def mask(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            for token in output_ids[cursor.consumed :]:  # catch up with the tokens chosen since
                cursor.advance(token)
            allowed = torch.tensor(cursor.allowed(), dtype=torch.long, device=logits.device)
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            return masked

        return mask
