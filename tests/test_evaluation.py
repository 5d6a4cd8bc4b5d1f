"""Readers, metrics and the command line (no model needed except where the fixture says)."""

from __future__ import annotations

import json

import pytest

from castline.cli import EXIT_BAD_INPUT, load_schema, main, model_from_json_schema
from castline.evaluation.metrics import (
    accuracy,
    entity_prf,
    field_accuracy,
    macro_f1,
    normalize_answer,
    per_label_prf,
    per_type_prf,
    squad_scores,
)
from castline.evaluation.readers import (
    read_conll,
    read_jsonl,
    read_labeled_csv,
    read_squad,
    select,
    tag_chunks,
)
from castline.schemas import DataError, UserError


def test_bio_and_iob1_chunks():
    assert tag_chunks(["B-PER", "I-PER", "O", "B-LOC"]) == [(0, 2, "PER"), (3, 4, "LOC")]
    # IOB1: I- starts an entity unless it continues one of the same type; B- splits adjacent ones
    assert tag_chunks(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == [
        (0, 2, "PER"),
        (2, 3, "PER"),
        (4, 5, "LOC"),
        (5, 6, "ORG"),
    ]


def test_conll_reader_skips_docstart_and_maps_character_spans(tmp_path):
    path = tmp_path / "d.conll"
    path.write_text("-DOCSTART- -X- O O\n\nAda B-person\nLovelace I-person\nwrote O\n\nParis I-location\n")
    sentences = read_conll(path)
    assert len(sentences) == 2
    first = sentences[0]
    assert first.text == "Ada Lovelace wrote"
    assert [first.text[s:e] for s, e, _ in first.entities] == ["Ada Lovelace"]
    assert sentences[1].entities == ((0, 5, "location"),)


def test_conll_reader_names_file_and_line_on_bad_tags(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("Ada B-person\nLovelace X-person\n")
    with pytest.raises(DataError, match=r"bad\.conll: line 2"):
        read_conll(path)


def test_csv_reader_checks_columns_and_empty_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,category\nhello,greet\n,greet\n")
    with pytest.raises(DataError, match="no column 'label'"):
        read_labeled_csv(path)
    with pytest.raises(DataError, match="line 3"):
        read_labeled_csv(path, label_column="category")
    tsv = tmp_path / "d.tsv"
    tsv.write_text("label\ttext\nham\thi there\n")
    assert read_labeled_csv(tsv)[0].text == "hi there"


def test_csv_fields_holding_line_breaks_are_read_whole(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"first line\nsecond line, with a comma",spam\nplain,ham\n', newline="")
    rows = read_labeled_csv(path)
    assert [(r.text, r.label) for r in rows] == [
        ("first line\nsecond line, with a comma", "spam"),
        ("plain", "ham"),
    ]


def test_headerless_tsv_with_named_columns(tmp_path):
    """The SMS Spam Collection's layout: label<TAB>text, no header, bare quotes in texts."""
    path = tmp_path / "SMSSpamCollection.tsv"
    path.write_text('ham\tGo until "jurong" point\nspam\tWIN a prize, call now\n')
    rows = read_labeled_csv(path, columns=["label", "text"])
    assert [(r.label, r.text) for r in rows] == [
        ("ham", 'Go until "jurong" point'),
        ("spam", "WIN a prize, call now"),
    ]


def test_exit_status_tells_bad_input_from_model_failure(tmp_path, monkeypatch, capsys):
    import castline.cli as cli
    from castline.schemas import ServerError

    assert main(["evaluate", "classify", str(tmp_path / "missing.csv")]) == cli.EXIT_BAD_INPUT
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhi,a\nbye,b\n")

    def server_down(args):
        raise ServerError("cannot reach http://gpu-box:8000")

    monkeypatch.setattr(cli, "run_evaluate", server_down)
    assert main(["evaluate", "classify", str(path)]) == cli.EXIT_MODEL_FAILURE
    assert "cannot reach" in capsys.readouterr().err


def test_predict_writes_one_json_line_per_input(tmp_path, monkeypatch):
    import castline.cli as cli
    from castline.models import FakeEngine

    monkeypatch.setattr(cli, "_model", lambda args: FakeEngine(outputs=["person:Ada"]))
    texts = tmp_path / "texts.txt"
    texts.write_text("Ada met Bob.\n\nAda again.\n")
    out = tmp_path / "entities.jsonl"
    assert main(["predict", "ner", str(texts), "--labels", "person", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["text"] for x in lines] == ["Ada met Bob.", "Ada again."]
    assert lines[0]["entities"][0] == {**lines[0]["entities"][0], "text": "Ada", "start": 0, "end": 3}
    questions = tmp_path / "qa.jsonl"
    questions.write_text(json.dumps({"question": "Who?", "context": " "}) + "\n")
    assert main(["predict", "qa", str(questions), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["error"] == "InvalidInputError"  # one failed input, one line
    assert main(["predict", "classify", str(texts)]) == cli.EXIT_BAD_INPUT  # no label set given


def test_the_label_set_comes_from_the_whole_file_not_the_sample(tmp_path):
    """A 2-item sample of a 5-label file is still a 5-way task (a smaller set inflates accuracy)."""
    from castline.cli import _chain, _load, build_parser
    from castline.models import FakeEngine

    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"text {i},label{i % 5}\n" for i in range(20)))
    args = build_parser().parse_args(["evaluate", "classify", str(path), "--sample", "2", "--few-shot", "1"])
    data, shots, every = _load(args)
    assert len(data) == 2 and len(every) == 20
    chain = _chain(args, FakeEngine(), every, shots)
    assert chain.labels.names == tuple(f"label{i}" for i in range(5))


def test_squad_reader_checks_offsets_and_understands_v2(tmp_path):
    data = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "Ada was born in London.",
                        "qas": [
                            {
                                "id": "1",
                                "question": "Where?",
                                "answers": [{"text": "London", "answer_start": 16}],
                            },
                            {"id": "2", "question": "When?", "answers": [], "is_impossible": True},
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    examples = read_squad(path)
    assert examples[0].answers == (("London", 16),) and examples[1].answers == ()
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="question 1"):
        read_squad(path)


def test_jsonl_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "a", "output": {"x": 1}}\n{"text": "b"}\n')
    with pytest.raises(DataError, match="line 2"):
        read_jsonl(path)


def test_select_limit_and_seeded_sample():
    items = list(range(100))
    assert select(items, limit=3) == [0, 1, 2]
    assert select(items, sample=5, seed=1) == select(items, sample=5, seed=1)
    assert select(items, sample=5, seed=1) != select(items, sample=5, seed=2)
    with pytest.raises(DataError):
        select(items, sample=200)


def test_classification_metrics():
    gold, pred = ["a", "a", "b", "c"], ["a", "b", "b", "b"]
    assert accuracy(gold, pred) == 0.5
    # per-label F1: a 2/3, b 1/2, c 0
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_entity_prf_is_strict_on_span_and_type():
    gold = [{(0, 3, "PER"), (10, 15, "LOC")}]
    pred = [{(0, 3, "PER"), (10, 14, "LOC"), (20, 25, "ORG")}]
    scores = entity_prf(gold, pred)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(0.4)


def test_per_label_and_per_type_reports():
    rows = per_label_prf(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert rows["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2.0}
    assert rows["b"]["precision"] == pytest.approx(1 / 3) and rows["b"]["recall"] == 1.0
    assert rows["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0}
    types = per_type_prf(
        [{(0, 3, "PER"), (10, 15, "LOC")}], [{(0, 3, "PER"), (10, 14, "LOC"), (20, 25, "ORG")}]
    )
    assert types["PER"]["f1"] == 1.0 and types["LOC"]["f1"] == 0.0 and types["LOC"]["support"] == 1.0
    assert types["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    from castline.evaluation.evaluate import Report

    report = Report(task="classify", n=4, metrics={"accuracy": 0.5}, seconds=1.0, per_label=rows)
    assert report.summary().splitlines()[2].split() == ["a", "1.000", "0.500", "0.667", "2"]


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    scores = squad_scores([["the cat sat"], ["London"]], ["cat sat", "in London town"])
    assert scores["exact_match"] == 50.0
    assert scores["f1"] == pytest.approx(75.0)  # 100 and 50 (precision 1/3, recall 1)
    assert squad_scores([[]], [None]) == {"exact_match": 100.0, "f1": 100.0}  # unanswerable


def test_field_accuracy_normalises_punctuation_and_space():
    gold = [{"a": "NO.2, JALAN", "b": "1"}]
    assert field_accuracy(gold, [{"a": "no 2 jalan", "b": "2"}]) == {
        "field_accuracy": 0.5,
        "a": 1.0,
        "b": 0.0,
    }
    assert field_accuracy(gold, [None])["field_accuracy"] == 0.0


def test_json_schema_files_become_pydantic_models(tmp_path):
    schema = {
        "title": "Order",
        "type": "object",
        "required": ["id", "items"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ["open", "closed"]},
            "items": {
                "type": "array",
                "items": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}},
            },
            "note": {"type": ["string", "null"]},
        },
    }
    model = model_from_json_schema(schema, "Order")
    order = model.model_validate({"id": 1, "items": [{"sku": "x"}], "status": "open"})
    assert order.id == 1 and order.note is None
    path = tmp_path / "order.json"
    path.write_text(json.dumps(schema))
    assert load_schema(str(path)).model_fields.keys() == model.model_fields.keys()
    with pytest.raises(UserError, match="module:Class"):
        load_schema("no_colon_here")


def test_cli_reports_bad_files_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.conll"
    path.write_text("token-without-tag\n")
    assert main(["evaluate", "ner", str(path)]) == 2
    assert "bad.conll: line 1" in capsys.readouterr().err


def test_cli_evaluate_prints_json_last(tmp_path, capsys, monkeypatch, tiny_model):
    import castline.models

    monkeypatch.setattr(castline.models, "load_model", lambda source=None, **options: tiny_model)
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(12)))
    assert main(["evaluate", "classify", str(path), "--few-shot", "1", "--limit", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n"] == 6 and 0 <= report["accuracy"] <= 1 and "macro_f1" in report


def test_cli_train_writes_an_adapter_that_evaluate_uses(tmp_path, capsys, monkeypatch, tiny_model, tokenizer):
    import castline.models

    tiny_dir = tmp_path / "tiny"
    tiny_model.hf_model.save_pretrained(tiny_dir)
    tokenizer.save_pretrained(tiny_dir)
    # each command gets a fresh copy of the tiny model, as separate processes would
    from castline.models.transformers import load_transformers as real_load

    monkeypatch.setattr(
        castline.models, "load_model", lambda source=None, **options: real_load(tiny_dir, dtype="float32")
    )
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n" for i in range(12)))
    out = tmp_path / "adapter"
    args = ["train", "classify", str(data), "--out", str(out), "--eval", str(data), "--rank", "4", "--json"]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["steps"] >= 1 and "accuracy" in trained and (out / "castline.json").is_file()
    assert main(["evaluate", "classify", str(data), "--adapter", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])


def test_report_counts_errors_by_kind_and_keeps_the_other_items():
    from castline.chains import AnswerQuestion
    from castline.evaluation.evaluate import evaluate_qa
    from castline.evaluation.readers import QAExample
    from castline.models import FakeEngine

    data = [
        QAExample("1", "Who?", "Ada wrote it.", (("Ada", 0),)),
        QAExample("2", "Who?", "   ", (("x", 0),)),  # an empty context is one typed error
        QAExample("3", "Who?", "Bob came.", (("Bob", 0),)),
    ]
    report = evaluate_qa(AnswerQuestion(model=FakeEngine()), data)
    assert report.errors == 1 and report.error_kinds == {"InvalidInputError": 1}
    assert report.metrics["exact_match"] > 0  # the fake copies the first word: both others right
    assert "InvalidInputError: 1" in report.summary()


def test_train_settings_round_trip_through_a_toml_config(tmp_path):
    from castline.train_config import read_train_config

    data = tmp_path / "d.csv"
    data.write_text("text,label\nx,a\ny,b\n")
    config = tmp_path / "train.toml"
    flags = ["train", "classify", str(data), "--out", str(tmp_path / "ad"), "--rank", "4", "--lr", "0.001"]
    assert main([*flags, "--labels", "a,b", "--write-config", str(config)]) == 0
    settings = read_train_config(config)
    assert settings["task"] == "classify" and settings["data"] == data and settings["rank"] == 4
    assert settings["lr"] == 0.001 and settings["labels"] == "a,b"
    # The file gives the defaults; a flag on the command line wins.
    again = tmp_path / "again.toml"
    assert main(["train", "--config", str(config), "--rank", "2", "--write-config", str(again)]) == 0
    assert read_train_config(again) == {**settings, "rank": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[training]\nrnak = 4\n", "unknown setting"),
        ("epochs = 'two'\n", "epochs must be int"),
        ("rank = true\n", "rank must be int"),
        ("task = 'poetry'\n", "task must be one of"),
        ("labels = [1, 2]\n", "labels must be a list of strings"),
        ("[a]\nrank = 1\n[b]\nrank = 2\n", "set twice"),
        ("rank = \n", "not valid TOML"),
    ],
)
def test_a_bad_train_config_is_refused_naming_the_setting(tmp_path, capsys, text, message):
    config = tmp_path / "train.toml"
    config.write_text(text)
    assert main(["train", "--config", str(config)]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_train_without_task_data_or_out_says_what_is_missing(capsys):
    assert main(["train", "--epochs", "1"]) == EXIT_BAD_INPUT
    assert "train needs task, data, out" in capsys.readouterr().err
