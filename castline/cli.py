"""The ``castline`` command: measure a chain on your own labeled file.

    castline evaluate classify reviews.csv --labels positive,negative --few-shot 2 --json
    castline evaluate ner dev.conll --sample 200 --seed 1
    castline evaluate qa squad-dev.json --limit 100
    castline evaluate extract receipts.jsonl --schema myapp.schemas:Receipt --spans
    castline evaluate summarize papers.jsonl --max-words 60          (ROUGE)
    castline evaluate translate pairs.tsv --target-language French   (chrF, BLEU)
    castline train classify train.csv --out adapters/intents --sample 800 --eval dev.csv --json
    castline train --config train.toml --epochs 2       (settings from a TOML file; flags win)
    castline evaluate classify test.csv --adapter adapters/intents
    castline predict ner texts.txt --labels person,city --out entities.jsonl

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object with ``n``
and the task's metrics. Exit status: 0 done, 2 bad input (a file, an option, the data), 3 the
model or its server failed, 130 training interrupted by Ctrl-C (the best adapter so far is saved).
Few-shot examples (``--few-shot K``: K per label for classify, K in all otherwise) are drawn with
``--seed`` from the data and left out of the evaluation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, create_model

from castline.evaluation.readers import (
    LabeledText,
    QAExample,
    TaggedSentence,
    TextPair,
    read_conll,
    read_jsonl,
    read_labeled_csv,
    read_squad,
    read_text_pairs,
    select,
)
from castline.schemas.errors import CastlineError, DataError, UserError

TASKS = ("classify", "ner", "qa", "extract", "summarize", "translate")
EXIT_BAD_INPUT = 2  # as argparse's usage errors
EXIT_MODEL_FAILURE = 3
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C


def build_parser(train_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``train_defaults`` (from ``--config``) replace the train options' defaults."""
    parser = argparse.ArgumentParser(
        prog="castline", description="Typed results from a local language model."
    )
    from castline import __version__

    parser.add_argument("--version", action="version", version=f"castline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="evaluate a task chain on a labeled file")
    tr = commands.add_parser("train", help="train a LoRA adapter for a task chain from a labeled file")
    pr = commands.add_parser("predict", help="run a task chain over unlabeled inputs and write JSONL")
    for sub in (ev, tr, pr):
        optional = "?" if sub is tr else None  # train may take them from --config
        sub.add_argument("task", choices=TASKS, nargs=optional)
        sub.add_argument(
            "data",
            type=Path,
            nargs=optional,
            help="CSV/TSV (classify), CoNLL (ner), SQuAD JSON (qa), JSONL (extract), JSONL or CSV/TSV "
            "of text and reference (summarize, translate); predict: JSONL of input objects, or one "
            "text per line",
        )
        sub.add_argument(
            "--model", default=None, help="a local model directory or .gguf file (default: embedded)"
        )
        sub.add_argument(
            "--engine",
            choices=["transformers", "llamacpp", "openai"],
            default=None,
            help="the engine that runs the model (default: $CASTLINE_ENGINE, else transformers; "
            "train needs transformers; openai: a vLLM server at --base-url serving --model)",
        )
        sub.add_argument("--limit", type=int, help="use the first N examples")
        sub.add_argument("--sample", type=int, help="use a seeded random sample of N examples")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--labels", help="comma-separated label set / entity types (default: from the data)")
        sub.add_argument("--text-column", default="text")
        sub.add_argument("--label-column", default="label")
        sub.add_argument(
            "--columns", help="classify: comma-separated column names of a file without a header (label,text)"
        )
        sub.add_argument("--no-calibration", action="store_true", help="classify: turn calibration off")
        sub.add_argument(
            "--allow-no-answer", action="store_true", help="qa: allow an explicit no-answer outcome"
        )
        sub.add_argument("--schema", help="extract: module:Class (a Pydantic model) or a JSON Schema file")
        sub.add_argument("--spans", action="store_true", help="extract: copy every field from the text")
        sub.add_argument(
            "--reference-column",
            help="summarize/translate: the field holding the reference (default: summary / translation)",
        )
        sub.add_argument("--max-words", type=int, default=60, help="summarize: the summary's length")
        sub.add_argument("--target-language", help="translate: the language to translate into")
        sub.add_argument("--source-language", help="translate: the source texts' language")
        sub.add_argument("--batch-size", type=int, default=None)
        sub.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    ev.add_argument(
        "--few-shot", type=int, default=0, metavar="K", help="few-shot examples drawn from the data"
    )
    for sub in (ev, pr):
        sub.add_argument("--adapter", type=Path, help="run with a trained adapter directory")
        sub.add_argument(
            "--base-url",
            help="--engine openai: the server's URL (default: $CASTLINE_BASE_URL); API key from "
            "$CASTLINE_API_KEY",
        )
        sub.add_argument(
            "--served-model", help="--engine openai: the served model name (default: the only one)"
        )
    pr.add_argument("--out", type=Path, help="the JSONL file to write (default: standard output)")
    tr.add_argument("--config", type=Path, help="a TOML file of train settings (flags given here win)")
    tr.add_argument("--write-config", type=Path, help="write the settings to this TOML file and stop")
    tr.add_argument("--out", type=Path, help="directory to write the adapter to (required)")
    tr.add_argument("--eval", type=Path, help="labeled file evaluated after training (same format)")
    tr.add_argument(
        "--validate",
        type=Path,
        help="labeled file that chooses the adapter: the weights with its best task metric are kept",
    )
    tr.add_argument("--patience", type=int, default=0, help="evaluations without improvement before stopping")
    tr.add_argument("--rank", type=int, default=16)
    tr.add_argument("--alpha", type=int, default=32)
    tr.add_argument("--dropout", type=float, default=0.05)
    tr.add_argument("--lr", type=float, default=5e-4)
    tr.add_argument("--epochs", type=int, default=1)
    tr.add_argument("--grad-accum", type=int, default=1)
    if train_defaults:
        tr.set_defaults(**train_defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train" and args.config:
            from castline.train_config import read_train_config

            args = build_parser(read_train_config(args.config)).parse_args(argv)
        if args.command == "train" and args.write_config:
            from castline.train_config import write_train_config

            write_train_config(vars(args), args.write_config)
            print(f"train settings written to {args.write_config}", file=sys.stderr)
            return 0
        if args.command == "predict":
            run_predict(args)
            return 0
        if args.command == "train":
            result = run_train(args)
            print(json.dumps(result) if args.json else f"adapter written to {args.out}: {result}")
            if result["interrupted"]:
                print("castline: interrupted; the best adapter so far was written", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0
        report = run_evaluate(args)
    except UserError as exc:  # the command, a file or an option is wrong: change it and rerun
        print(f"castline: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CastlineError as exc:  # the model or its server failed
        print(f"castline: error: {exc}", file=sys.stderr)
        return EXIT_MODEL_FAILURE
    if args.json:
        summary = {
            "task": report.task,
            "n": report.n,
            **report.metrics,
            "errors": report.errors,
            "error_kinds": report.error_kinds,
            "per_label": report.per_label,
        }
        print(json.dumps({**summary, "seconds": round(report.seconds, 2)}))
    else:
        print(report.summary())
    return 0


def run_evaluate(args: argparse.Namespace) -> Any:
    from castline.evaluation.evaluate import evaluate

    data, shots, every = _load(args)
    chain = _chain(args, _model(args), every, shots)
    if args.adapter:
        chain.use_adapter(args.adapter)
    return evaluate(chain, data, args.batch_size)


def run_predict(args: argparse.Namespace) -> None:
    """Write one JSON line per input: the result, or ``{"error": kind, "message": ...}``."""
    from castline.evaluation.evaluate import run_batched
    from castline.evaluation.readers import read_inputs

    if args.task in ("classify", "ner") and not args.labels:
        raise UserError(f"predict {args.task} needs the label set: --labels a,b,c")
    inputs = select(read_inputs(args.data), args.limit, args.sample, args.seed)
    chain = _chain(args, _model(args), [], [])
    if args.adapter:
        chain.use_adapter(args.adapter)
    outputs = run_batched(
        lambda xs: chain.batch(xs, return_exceptions=True), inputs, args.batch_size or 16, "predict"
    )
    lines = [json.dumps(_jsonable(o), ensure_ascii=False) for o in outputs]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    failed = sum(isinstance(o, Exception) for o in outputs)
    print(f"predict: {len(outputs)} inputs, {failed} errors", file=sys.stderr)


def _jsonable(output: Any) -> Any:
    if isinstance(output, Exception):
        return {"error": type(output).__name__, "message": str(output)}
    if isinstance(output, BaseModel):
        return output.model_dump(mode="json")
    return output


def _model(args: argparse.Namespace) -> Any:
    from castline.models import load_model
    from castline.models.loading import default_engine

    server = {"base_url": args.base_url, "model": args.served_model}
    if (args.engine or default_engine()) != "openai" and any(server.values()):
        raise UserError("--base-url and --served-model go with --engine openai")
    return load_model(args.model, engine=args.engine, **{k: v for k, v in server.items() if v is not None})


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save and (with --eval) evaluate an adapter; returns the figures printed."""
    from castline.models import load_model
    from castline.models.transformers.adapters import LoraSettings

    missing = [name for name in ("task", "data", "out") if getattr(args, name) is None]
    if missing:
        raise UserError(f"train needs {', '.join(missing)}: give them as arguments or in --config")
    if args.task not in TASKS:
        raise UserError(f"task must be one of {list(TASKS)}, not {args.task!r}")
    args.few_shot = 0
    data, _, every = _load(args)
    held_out = _read(args.task, args.eval, args) if args.eval else None
    validation = _read(args.task, args.validate, args) if args.validate else None
    settings = LoraSettings(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size or 8,
        gradient_accumulation=args.grad_accum,
        seed=args.seed,
        patience=args.patience,
    )
    chain = _chain(
        args,
        load_model(args.model, engine=args.engine or "transformers"),
        every + (held_out or []) + (validation or []),
        [],
    )
    report = chain.fine_tune(
        [_pair(args.task, x) for x in data],
        settings=settings,
        save_to=args.out,
        evaluate_on=held_out,
        validate_on=validation,
    )
    return {
        "out": str(args.out),
        "examples": report.examples,
        "steps": report.steps,
        "training_seconds": round(report.seconds, 1),
        "train_loss": report.train_loss,
        "eval_losses": report.eval_losses,
        "selected_by": report.selected_by,
        "scores": report.scores,
        "best_step": report.best_step,
        "stopped_early": report.stopped_early,
        "interrupted": report.interrupted,
        **report.evaluation,
    }


def _pair(task: str, record: Any) -> tuple[dict[str, Any], Any]:
    """A training example (chain input, expected output) from a data record."""
    if task == "classify":
        return {"text": record.text}, record.label
    if task == "ner":
        entities = [
            {"text": record.text[s:e], "label": lab, "start": s, "end": e} for s, e, lab in record.entities
        ]
        return {"text": record.text}, entities
    if task == "qa":
        return {"question": record.question, "context": record.context}, (
            record.answers[0][0] if record.answers else None
        )
    if isinstance(record, TextPair):
        return {"text": record.text}, record.reference
    return {"text": record.text}, record.output


def _read(task: str, path: Path, args: argparse.Namespace) -> list[Any]:
    if task == "classify":
        columns = [c.strip() for c in args.columns.split(",")] if getattr(args, "columns", None) else None
        return read_labeled_csv(path, args.text_column, args.label_column, columns)
    if task == "ner":
        return read_conll(path)
    if task == "qa":
        return read_squad(path)
    if task in ("summarize", "translate"):
        reference = args.reference_column or ("summary" if task == "summarize" else "translation")
        return read_text_pairs(path, args.text_column, reference)
    return read_jsonl(path)


def _load(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any]]:
    """The records to use (after --limit/--sample), the few-shot records (never among them), and
    every record of the file: the label set comes from all of it, never from the sample, which
    would leave out labels and make the task look easier than it is."""
    records = _read(args.task, args.data, args)
    every = list(records)
    shots: list[Any] = []
    if args.few_shot:
        rng = random.Random(args.seed)
        if args.task == "classify":
            for label in sorted({r.label for r in records}):
                matching = [i for i, r in enumerate(records) if r.label == label]
                shots += rng.sample(matching, min(args.few_shot, len(matching)))
        else:
            shots = rng.sample(range(len(records)), min(args.few_shot, len(records)))
        chosen = set(shots)
        shots = [records[i] for i in sorted(chosen)]
        records = [r for i, r in enumerate(records) if i not in chosen]
    return select(records, args.limit, args.sample, args.seed), shots, every


def _chain(args: argparse.Namespace, model: Any, data: list[Any], shots: list[Any]) -> Any:
    """The task chain; label sets and entity types come from ``data`` (the whole file) and ``shots``."""
    given = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if args.task == "classify":
        from castline.chains.classify import Classify

        labels = given or sorted({x.label for x in data} | {x.label for x in shots})
        unknown = {x.label for x in data} - set(labels)
        if unknown:
            raise DataError(f"{args.data}: labels {sorted(unknown)} are not in --labels")
        examples: list[Any] = [
            {"text": x.text, "label": x.label} for x in shots if isinstance(x, LabeledText)
        ]
        # Calibration by default: on for the base model, off under an adapter (chains/classify.py).
        calibrate = False if args.no_calibration else None
        return Classify(labels, model=model, examples=examples, calibrate=calibrate)
    if args.task == "ner":
        from castline.chains.ner import RecognizeEntities

        labels = given or sorted(
            {e[2] for x in data for e in x.entities} | {e[2] for x in shots for e in x.entities}
        )
        if not labels:
            raise DataError(f"{args.data}: no entities in the data; give the types with --labels")
        examples = [
            {"text": x.text, "entities": [{"text": x.text[s:e], "label": lab} for s, e, lab in x.entities]}
            for x in shots
            if isinstance(x, TaggedSentence)
        ]
        return RecognizeEntities(labels, model=model, examples=examples)
    if args.task == "qa":
        from castline.chains.qa import AnswerQuestion

        examples = [
            {"question": x.question, "context": x.context, "answer": x.answers[0][0] if x.answers else None}
            for x in shots
            if isinstance(x, QAExample)
        ]
        return AnswerQuestion(model=model, allow_no_answer=args.allow_no_answer, examples=examples)
    if args.task == "summarize":
        from castline.chains.summarize import Summarize

        examples = [{"text": x.text, "summary": x.reference} for x in shots if isinstance(x, TextPair)]
        return Summarize(max_words=args.max_words, model=model, examples=examples)
    if args.task == "translate":
        from castline.chains.translate import Translate

        if not args.target_language:
            raise UserError("translate needs --target-language, e.g. --target-language French")
        examples = [{"text": x.text, "translation": x.reference} for x in shots if isinstance(x, TextPair)]
        return Translate(
            args.target_language, source_language=args.source_language, model=model, examples=examples
        )
    from castline.chains.extract import Extract

    if not args.schema:
        raise UserError("extract needs --schema module:Class or --schema schema.json")
    schema = load_schema(args.schema)
    examples = [({"text": x.text}, schema.model_validate(x.output)) for x in shots]
    return Extract(schema, model=model, spans=args.spans, examples=examples)


def load_schema(spec: str) -> type[BaseModel]:
    """A Pydantic class from ``module:Class`` (importable from the current directory) or a JSON Schema."""
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"schema file {path} does not exist")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        return model_from_json_schema(schema, schema.get("title", "Record"))
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise UserError(f"--schema {spec!r}: use module:Class or a .json file")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"--schema {spec!r}: cannot import it ({exc})") from exc
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise UserError(f"--schema {spec!r} is not a Pydantic model class")
    return found


_JSON_TYPES: dict[str, Any] = {"string": str, "number": float, "integer": int, "boolean": bool}


def model_from_json_schema(schema: dict[str, Any], name: str) -> type[BaseModel]:
    """A Pydantic model for an object JSON Schema (nested objects, arrays, enums, nullable types)."""
    if schema.get("type") != "object" or "properties" not in schema:
        raise UserError(f"schema {name!r} must be an object with properties")
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for key, prop in schema["properties"].items():
        annotation = _annotation(prop, f"{name}_{key}")
        default = ... if key in required else None
        if key not in required:
            annotation = annotation | None
        fields[key] = (annotation, default)
    return create_model(name, **fields)


def _annotation(prop: dict[str, Any], name: str) -> Any:
    if "enum" in prop:
        return Literal[tuple(prop["enum"])]  # type: ignore[valid-type,misc]  # built at run time
    kind = prop.get("type")
    nullable = isinstance(kind, list) and "null" in kind
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "object":
        result: Any = model_from_json_schema(prop, name)
    elif kind == "array":
        item = _annotation(prop.get("items", {"type": "string"}), name)
        result = list[item]  # type: ignore[valid-type]  # built at run time
    elif kind in _JSON_TYPES:
        result = _JSON_TYPES[kind]
    else:
        raise UserError(f"schema property {name!r}: type {prop.get('type')!r} is not supported")
    return result | None if nullable else result


if __name__ == "__main__":
    sys.exit(main())
