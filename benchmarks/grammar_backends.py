"""JSON-Schema grammar backends side by side: castline's two (llguidance, outlines_core), and
llguidance and xgrammar with their own defaults.

    .venv-vllm/bin/python benchmarks/grammar_backends.py [--limit N] [--timeout 5] [--subsets A B ...]

Schemas are the JSONSchemaBench subsets and the JSON-Schema-Test-Suite (draft 7, draft 2020-12,
optional tests included), read from ../shared/data/jsonschema (see ../shared/data/SOURCES.md).
Every backend works over the same vocabulary: the embedded model's Hugging Face tokenizer.

For each schema and backend:

- compile: the schema is compiled in a forked child process that is killed after --timeout
  seconds, so a compile that never ends or allocates without bound cannot take the run down.
  The outcome is "compiled", "unsupported" (the backend raised or reported an error), "hang"
  (killed at the limit) or "crash" (the child died, or ran out of its --memory-gib address space).
  Compile time runs until the first token mask is ready: llguidance builds its lexer lazily, so
  its constructor alone would hide work the other two do up front.
- correctness, where the data labels instances valid or invalid: each instance is written as
  compact JSON, tokenized, and walked through the backend's matcher token by token (mask, then
  advance), then the end-of-turn token must be accepted. "valid rejected" counts over-constrained
  grammars; "invalid accepted" counts under-constrained ones, the worse bug: decoding can then
  produce output that fails validation.
- mask time: per token, over those walks.

Settings: castline's backends run exactly as castline compiles a dict schema (``output_spec``,
``TokenTable.grammar``; disk cache and castline's own time bound aside). The two libraries run with
their defaults, chosen so that compact JSON is in the language (printed with the results).
castline and xgrammar (strict_mode) forbid object keys a schema does not declare where it is silent
about them, plain llguidance follows JSON Schema and allows them; "valid rejected" counts that
policy too.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import llguidance
import llguidance.hf
import numpy as np
import xgrammar
from outlines_core import Index
from transformers import AutoTokenizer, PreTrainedTokenizerBase

import castline.models.grammars.outlines_core
from castline.models.grammars import Grammar
from castline.models.hf_tokenizer import token_table
from castline.schemas.output_types import Regex, output_spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschema"
TOKENIZER = Path("/root/.cache/castline/gguf/SmolLM2-135M-Instruct.Q4_1-eae68ebf33240f6f")
TEST_SUITE_DRAFTS = ("draft7", "draft2020-12")


# -- data --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One schema and its labelled instances as (token ids of the compact JSON, valid)."""

    name: str
    schema: Any
    instances: list[tuple[list[int], bool]]


def subset_names(data: Path) -> list[str]:
    bench = sorted(p.name.removesuffix(".jsonl.gz") for p in (data / "jsonschemabench").glob("*.jsonl.gz"))
    return [*bench, *(f"TestSuite_{draft}" for draft in TEST_SUITE_DRAFTS)]


def read_subset(data: Path, subset: str) -> Iterator[tuple[str, Any, list[tuple[Any, bool]]]]:
    """``(name, schema, [(instance, valid)])`` in file order."""
    if subset.startswith("TestSuite_"):
        root = data / "json-schema-test-suite" / "tests" / subset.removeprefix("TestSuite_")
        for path in sorted(root.rglob("*.json")):
            for group in json.loads(path.read_text()):
                tests = [(t["data"], t["valid"]) for t in group["tests"]]
                yield f"{path.relative_to(root)}: {group['description']}", group["schema"], tests
        return
    with gzip.open(data / "jsonschemabench" / f"{subset}.jsonl.gz", "rt") as lines:
        for line in lines:
            row = json.loads(line)
            yield row["id"], row["schema"], [(t["data"], t["valid"]) for t in row["tests"]]


def load_cases(data: Path, subset: str, limit: int | None, tokenizer: PreTrainedTokenizerBase) -> list[Case]:
    cases = []
    for name, schema, tests in read_subset(data, subset):
        if limit is not None and len(cases) == limit:
            break
        instances = []
        for instance, valid in tests:
            text = json.dumps(instance, separators=(",", ":"), ensure_ascii=False)
            # Text an instance holds that spells a control token stays text, as castline encodes it.
            ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
            instances.append((list(ids), bool(valid)))
        cases.append(Case(name, schema, instances))
    return cases


# -- backends ----------------------------------------------------------------------------------------


class Unsupported(Exception):
    """A backend reported an error through its state rather than by raising (llguidance)."""


class Walker(Protocol):
    """One output's position in a compiled grammar."""

    def mask(self) -> None:
        """Compute the mask of tokens allowed next (called before every ``advance``)."""

    def advance(self, token: int) -> bool:
        """Consume ``token``; False when the grammar does not allow it."""

    def finish(self) -> bool:
        """Whether the end-of-turn token is accepted here (the output may end)."""


class Backend(Protocol):
    name: str
    package: str  # the library whose version is printed
    settings: str

    def compile(self, schema: Any) -> Any: ...

    def start(self, compiled: Any) -> Walker: ...


def _compile_unbounded(pattern: str, vocabulary: Any, vocabulary_key: str) -> Index:
    """castline's outlines_core ``compile_index`` without its disk cache and its own child process.

    The cache would turn every compile after the first run into a file read, and the benchmark
    already bounds each compile in a child of its own.
    """
    return Index(pattern, vocabulary)


class Castline:
    """A castline grammar backend exactly as castline drives it for a dict schema."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, backend: str) -> None:
        self.name = f"castline/{backend}"
        self.package = backend
        self.settings = (
            "castline's output_spec(schema): objects with properties get additionalProperties: false, "
            "whitespace [ ]?"
            + ("; index over token bytes with an end sentinel" if backend == "outlines_core" else "")
        )
        # OutlinesCoreGrammar looks compile_index up on every compile, so this reaches all of them.
        castline.models.grammars.outlines_core.compile_index = _compile_unbounded
        os.environ["CASTLINE_COMPILE_SECONDS"] = "1e9"  # the benchmark's own child bounds compiles
        self.table = token_table(tokenizer)
        self.table.use_grammar_backend(backend)
        # What the backend derives from the vocabulary is built here, not inside every timed compile.
        self.table.grammar(output_spec(Regex("a")))

    def compile(self, schema: Any) -> Grammar:
        return self.table.grammar(output_spec(schema))

    def start(self, compiled: Grammar) -> Walker:
        return CastlineWalker(compiled)


class CastlineWalker:
    def __init__(self, grammar: Grammar) -> None:
        self.cursor = grammar.cursor()
        self.row = np.zeros(grammar.table.size, dtype=bool)

    def mask(self) -> None:
        self.row[:] = False
        self.cursor.mask_into(self.row)

    def advance(self, token: int) -> bool:
        # castline's constraint is its mask: a token outside it is never sampled.
        if not self.row[token]:
            return False
        self.cursor.advance(token)
        return True

    def finish(self) -> bool:
        return self.cursor.can_end()


class LLGuidance:
    name = package = "llguidance"
    settings = "defaults: any JSON whitespace (compact allowed), lenient off (unknown keywords are errors)"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)

    def compile(self, schema: Any) -> llguidance.LLMatcher:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        # log_level=0: a rejected token would otherwise print the parser state to stderr.
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise Unsupported(matcher.get_error())
        return matcher

    def start(self, compiled: llguidance.LLMatcher) -> Walker:
        return LLGuidanceWalker(compiled.deep_copy(), self.tokenizer.eos_token)


class LLGuidanceWalker:
    def __init__(self, matcher: llguidance.LLMatcher, eos: int) -> None:
        self.matcher = matcher
        self.eos = eos

    def mask(self) -> None:
        self.matcher.compute_bitmask()
        # Errors found while computing a mask (a lexer or parser limit) surface only as state.
        if self.matcher.is_error():
            raise Unsupported(self.matcher.get_error())

    def advance(self, token: int) -> bool:
        return self.matcher.consume_token(token)

    def finish(self) -> bool:
        return self.matcher.consume_token(self.eos)


class XGrammar:
    name = package = "xgrammar"
    settings = "defaults: any_whitespace=True (compact allowed), strict_mode=True (no undeclared keys/items)"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer)

    def compile(self, schema: Any) -> xgrammar.CompiledGrammar:
        # A compiler per compile, made in the child: a parent's compiler would carry a thread pool
        # across fork and a cache across schemas.
        return xgrammar.GrammarCompiler(self.info).compile_json_schema(json.dumps(schema))

    def start(self, compiled: xgrammar.CompiledGrammar) -> Walker:
        return XGrammarWalker(compiled, self.info.vocab_size)


class XGrammarWalker:
    def __init__(self, compiled: xgrammar.CompiledGrammar, vocab_size: int) -> None:
        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def mask(self) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)

    def advance(self, token: int) -> bool:
        return self.matcher.accept_token(token)

    def finish(self) -> bool:
        return self.matcher.accept_token(self.matcher.stop_token_ids[0])


# -- one compile in a child process --------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "compiled", "unsupported", "hang" or "crash"
    seconds: float = 0.0
    message: str = ""
    accepted: list[bool] | None = None  # per instance; None when the checks did not finish
    mask_seconds: list[float] = field(default_factory=list)


def accepts(walker: Walker, token_ids: list[int], mask_seconds: list[float]) -> bool:
    for token in token_ids:
        started = time.perf_counter()
        try:
            walker.mask()
        except Unsupported:
            return False  # the backend gave up on this output: decoding would fail here
        mask_seconds.append(time.perf_counter() - started)
        if not walker.advance(token):
            return False
    return walker.finish()


def _child(backend: Backend, case: Case, memory_bytes: int, channel: Connection) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))
    # xgrammar logs a warning per ignored keyword from C++; outcomes come back through the channel.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        started = time.perf_counter()
        compiled = backend.compile(case.schema)
        backend.start(compiled).mask()
        channel.send(("compiled", time.perf_counter() - started))
    except MemoryError:
        channel.send(("crash", "out of memory"))
        return
    except Exception as exc:  # every backend raises its own types for schemas it cannot handle
        channel.send(("unsupported", f"{type(exc).__name__}: {exc}"))
        return
    mask_seconds: list[float] = []
    accepted = [accepts(backend.start(compiled), ids, mask_seconds) for ids, _ in case.instances]
    channel.send((accepted, mask_seconds))


def measure(backend: Backend, case: Case, timeout: float, memory_bytes: int) -> Outcome:
    """Compile ``case`` with ``backend`` in a forked child, killed after ``timeout`` seconds.

    The instance checks get another ``timeout`` once the compile is done.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(backend, case, memory_bytes, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            return Outcome("hang", timeout)
        try:
            status, detail = receive.recv()
        except EOFError:
            child.join()
            return Outcome("crash", message=f"exit code {child.exitcode}")
        if status != "compiled":
            return Outcome(status, message=detail)
        if not receive.poll(timeout):
            return Outcome("compiled", detail)
        try:
            accepted, mask_seconds = receive.recv()
        except EOFError:  # died while checking: the compile still counts
            return Outcome("compiled", detail)
        return Outcome("compiled", detail, accepted=accepted, mask_seconds=mask_seconds)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()


# -- report -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """One backend's results over one subset."""

    statuses: Counter[str] = field(default_factory=Counter)
    compile_seconds: list[float] = field(default_factory=list)
    mask_seconds: list[float] = field(default_factory=list)
    valid_rejected: int = 0
    valid_total: int = 0
    invalid_accepted: int = 0
    invalid_total: int = 0
    checks_lost: int = 0  # compiled schemas whose checks did not finish (time limit, or the child died)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.statuses[outcome.status] += 1
        if outcome.message:
            self.errors[outcome.message.strip().splitlines()[0][:120]] += 1
        if outcome.status != "compiled":
            return
        self.compile_seconds.append(outcome.seconds)
        if outcome.accepted is None:
            self.checks_lost += bool(case.instances)
            return
        self.mask_seconds += outcome.mask_seconds
        for (_, valid), accepted in zip(case.instances, outcome.accepted, strict=True):
            if valid:
                self.valid_total += 1
                self.valid_rejected += not accepted
            else:
                self.invalid_total += 1
                self.invalid_accepted += accepted


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def table(tallies: dict[str, Tally], n_schemas: int, has_instances: bool) -> str:
    header = [
        "backend",
        "schemas",
        "compiled",
        "unsupported",
        "hang",
        "crash",
        "compile p50 ms",
        "compile p95 ms",
        "mask p50/p95 µs",
    ]
    if has_instances:
        header += ["valid rejected", "invalid accepted"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, tally in tallies.items():
        compiles, masks = tally.compile_seconds, tally.mask_seconds
        row = [
            name,
            str(n_schemas),
            *(str(tally.statuses[s]) for s in ("compiled", "unsupported", "hang", "crash")),
            f"{percentile(compiles, 0.5) * 1e3:.1f}" if compiles else "-",
            f"{percentile(compiles, 0.95) * 1e3:.1f}" if compiles else "-",
            f"{percentile(masks, 0.5) * 1e6:.0f}/{percentile(masks, 0.95) * 1e6:.0f}" if masks else "-",
        ]
        if has_instances:
            row += [
                f"{tally.valid_rejected}/{tally.valid_total}",
                f"{tally.invalid_accepted}/{tally.invalid_total}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared jsonschema data folder")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER, help="Hugging Face tokenizer folder")
    parser.add_argument("--limit", type=int, default=None, help="schemas per subset (default: all)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a compile may take")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address space of a compile child")
    parser.add_argument("--subsets", nargs="+", help="subset names (default: all)")
    parser.add_argument("--errors", type=int, default=3, help="most common error messages shown per backend")
    args = parser.parse_args()

    if not args.data.is_dir():
        sys.exit(
            f"no data at {args.data}: this benchmark reads ../shared/data/jsonschema beside the checkout"
        )
    available = subset_names(args.data)
    unknown = sorted(set(args.subsets or ()) - set(available))
    if unknown:
        sys.exit(f"unknown subsets {unknown}; available: {' '.join(available)}")

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    backends: list[Backend] = [
        Castline(tokenizer, "llguidance"),
        Castline(tokenizer, "outlines_core"),
        LLGuidance(tokenizer),
        XGrammar(tokenizer),
    ]
    memory_bytes = int(args.memory_gib * 2**30)

    print("## Grammar backends on JSON Schemas\n")
    print(f"tokenizer: {args.tokenizer} ({len(tokenizer)} tokens)")
    print(f"compile limit: {args.timeout:g} s and {args.memory_gib:g} GiB address space per child")
    print(f"schemas per subset: {args.limit or 'all'}")
    for backend in backends:
        version = importlib.metadata.version(backend.package)
        print(f"- {backend.name} ({backend.package} {version}): {backend.settings}")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("castline", "transformers"))
    print(f"- {versions}")
    print(
        "\ncompile: until the first mask is ready; valid rejected = over-constrained, "
        "invalid accepted = under-constrained (the worse bug); both over compiled schemas only"
    )

    for subset in args.subsets or available:
        cases = load_cases(args.data, subset, args.limit, tokenizer)
        tallies = {backend.name: Tally() for backend in backends}
        started = time.perf_counter()
        for i, case in enumerate(cases, 1):
            for backend in backends:
                tallies[backend.name].add(case, measure(backend, case, args.timeout, memory_bytes))
            if i % 50 == 0:
                print(
                    f"{subset}: {i}/{len(cases)} schemas, {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                )
        with_instances = sum(bool(c.instances) for c in cases)
        print(
            f"\n### {subset}: {len(cases)} schemas ({with_instances} with instances), "
            f"{time.perf_counter() - started:.0f} s\n"
        )
        print(table(tallies, len(cases), with_instances > 0))
        notes = [
            f"- {name}: instance checks did not finish on {tally.checks_lost} compiled schemas"
            for name, tally in tallies.items()
            if tally.checks_lost
        ]
        notes += [
            f"- {name} x{count}: {message}"
            for name, tally in tallies.items()
            for message, count in tally.errors.most_common(args.errors)
        ]
        if notes:
            print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
