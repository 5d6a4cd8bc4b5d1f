"""LoRA adapters on a tiny random Llama saved to disk: train, save, reload, switch, refuse."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from castline.chains import AnswerQuestion, Classify, Extract, RecognizeEntities, StructuredChain
from castline.models import load_model
from castline.models.transformers.adapters import LoraSettings
from castline.schemas import InvalidInputError, ModelLoadError, UserError
from tests.test_tasks import Receipt

LABELS = ["alpha", "beta", "gamma"]
TEXTS = [f"message number {i} about {LABELS[i % 3]}" for i in range(18)]
FAST = LoraSettings(rank=4, alpha=8, batch_size=6, epochs=2, learning_rate=5e-3, eval_fraction=0.2)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.hf_model.save_pretrained(directory)
    tiny_model.tokenizer.save_pretrained(directory)
    return directory


def fresh(tiny_dir):
    return load_model(tiny_dir, dtype="float32")


def test_fine_tune_trains_saves_in_peft_format_and_changes_outputs(tiny_dir, tmp_path):
    model = fresh(tiny_dir)
    chain = Classify(LABELS, model=model, calibrate=False)
    before = chain.batch(TEXTS[:6])
    report = chain.fine_tune(
        [({"text": t}, LABELS[i % 3]) for i, t in enumerate(TEXTS)], settings=FAST, save_to=tmp_path / "clf"
    )
    assert report.steps > 0 and report.held_out == 3 and report.eval_losses
    assert {"adapter_config.json", "adapter_model.safetensors", "castline.json"} <= {
        p.name for p in (tmp_path / "clf").iterdir()
    }
    metadata = json.loads((tmp_path / "clf" / "castline.json").read_text())
    assert (
        metadata["task"] == "Classify"
        and metadata["labels"] == LABELS
        and metadata["base_model"] == model.name
    )
    assert chain.batch(TEXTS[:6]) != before


def test_reload_in_a_fresh_process_gives_identical_greedy_outputs(tiny_dir, tmp_path):
    model = fresh(tiny_dir)
    chain = StructuredChain(Receipt, model=model, max_new_tokens=60)
    examples = [
        ({"text": f"shop {i} total {i}.00"}, Receipt(company=f"shop {i}", total=f"{i}.00")) for i in range(12)
    ]
    chain.fine_tune(examples, settings=FAST, save_to=tmp_path / "ext")
    expected = [
        r.model_dump() if not isinstance(r, Exception) else type(r).__name__
        for r in chain.batch(["shop 7 total 7.00", "shop 9 total 9.00"], return_exceptions=True)
    ]
    script = textwrap.dedent(f"""
        import json
        from castline.chains import StructuredChain
        from castline.models import load_model
        from tests.test_tasks import Receipt
        model = load_model({str(tiny_dir)!r}, dtype="float32")
        chain = StructuredChain(Receipt, model=model, max_new_tokens=60)
        chain.use_adapter({str(tmp_path / "ext")!r})
        out = chain.batch(["shop 7 total 7.00", "shop 9 total 9.00"], return_exceptions=True)
        print(json.dumps([r.model_dump() if not isinstance(r, Exception) else type(r).__name__ for r in out]))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected


def test_one_model_serves_many_adapters_like_models_with_one_each(tiny_dir, tmp_path):
    shared = fresh(tiny_dir)
    first = Classify(LABELS, model=shared, calibrate=False)
    first.fine_tune([({"text": t}, "alpha") for t in TEXTS], settings=FAST, save_to=tmp_path / "a", name="a")
    second = Classify(LABELS, model=shared, calibrate=False)
    second.fine_tune([({"text": t}, "gamma") for t in TEXTS], settings=FAST, save_to=tmp_path / "b", name="b")
    plain = Classify(LABELS, model=shared, calibrate=False)
    mixed = [first.invoke(TEXTS[0]), second.invoke(TEXTS[0]), plain.invoke(TEXTS[0]), first.invoke(TEXTS[0])]
    assert mixed[0] == mixed[3]
    for directory, result in (("a", mixed[0]), ("b", mixed[1])):
        alone = Classify(LABELS, model=fresh(tiny_dir), calibrate=False).use_adapter(tmp_path / directory)
        assert alone.invoke(TEXTS[0]).probabilities == pytest.approx(result.probabilities, abs=1e-5)
    assert Classify(LABELS, model=fresh(tiny_dir), calibrate=False).invoke(
        TEXTS[0]
    ).probabilities == pytest.approx(mixed[2].probabilities, abs=1e-5)


def test_merged_adapter_gives_the_same_scores(tiny_dir, tmp_path):
    chain = Classify(LABELS, model=fresh(tiny_dir), calibrate=False)
    chain.fine_tune([({"text": t}, LABELS[i % 3]) for i, t in enumerate(TEXTS)], settings=FAST)
    before = [r.probabilities for r in chain.batch(TEXTS[:4])]
    original = chain.model
    chain.merge_adapter()
    assert chain.model is not original
    for merged, unmerged in zip(chain.batch(TEXTS[:4]), before, strict=True):
        assert merged.probabilities == pytest.approx(unmerged, abs=1e-4)


def test_adapter_for_other_labels_or_base_model_is_refused(tiny_dir, tmp_path, tokenizer):
    model = fresh(tiny_dir)
    chain = Classify(LABELS, model=model)
    chain.fine_tune([({"text": t}, "alpha") for t in TEXTS[:6]], settings=FAST, save_to=tmp_path / "c")
    with pytest.raises(ModelLoadError, match="different label set"):
        Classify(["x", "y"], model=fresh(tiny_dir)).use_adapter(tmp_path / "c")
    other = fresh(tiny_dir)
    other.name = "another-base"
    with pytest.raises(ModelLoadError, match="trained on"):
        Classify(LABELS, model=other).use_adapter(tmp_path / "c")
    with pytest.raises(ModelLoadError, match="not a castline adapter"):
        Classify(LABELS, model=model).use_adapter(tmp_path)


@pytest.mark.parametrize(
    ("make_chain", "bad_example", "reason"),
    [
        (lambda m: Classify(LABELS, model=m), ({"text": "x"}, "delta"), "not one of"),
        (
            lambda m: RecognizeEntities(["person"], model=m),
            ({"text": "Ada"}, [{"text": "Bob", "label": "person", "start": 0, "end": 3}]),
            "is not at",
        ),
        (
            lambda m: AnswerQuestion(model=m),
            ({"question": "q", "context": "abc"}, "xyz"),
            "not in its context",
        ),
        (lambda m: StructuredChain(Receipt, model=m), ({"text": "x"}, {"company": 3}), "validation error"),
        (
            lambda m: Extract(Receipt, model=m, spans=True),
            ({"text": "ABC 1.00"}, {"company": "XYZ", "total": "1.00"}),
            "not copied",
        ),
    ],
)
def test_bad_training_data_fails_before_training_with_row_and_reason(
    tiny_model, make_chain, bad_example, reason
):
    chain = make_chain(tiny_model)
    with pytest.raises(InvalidInputError, match=f"training example 0: .*{reason}"):
        chain.fine_tune([bad_example], settings=FAST)
    assert not tiny_model.adapters


def test_lora_settings_validate_on_creation():
    with pytest.raises(UserError, match="rank"):
        LoraSettings(rank=0)


def _weights(model, name):
    return {n: p.detach().clone() for n, p in model.hf_model.named_parameters() if f".{name}." in n}


def test_the_adapter_kept_is_the_best_by_the_validation_metric_and_patience_stops_early(
    tiny_dir, monkeypatch
):
    from castline.evaluation.readers import LabeledText

    model = fresh(tiny_dir)
    chain = Classify(LABELS, model=model, calibrate=False)
    validation = [LabeledText(t, LABELS[i % 3]) for i, t in enumerate(TEXTS[:6])]
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2])  # the first evaluation is the best one
    snapshots = []
    import castline.evaluation.evaluate as evaluation

    def scripted_evaluate(chain_, data, batch_size=None):
        snapshots.append(_weights(model, chain_.adapter))
        return evaluation.Report(task="classify", n=len(data), metrics={"accuracy": next(scores)}, seconds=0)

    monkeypatch.setattr(evaluation, "evaluate", scripted_evaluate)
    settings = LoraSettings(
        rank=4, alpha=8, batch_size=2, epochs=3, learning_rate=5e-3, eval_every=2, patience=2
    )
    report = chain.fine_tune(
        [({"text": t}, LABELS[i % 3]) for i, t in enumerate(TEXTS)], settings=settings, validate_on=validation
    )
    assert report.selected_by == "accuracy on 6 validation records"
    assert report.best_step == 2 and report.stopped_early and len(report.scores) == 3
    assert report.steps == 6  # stopped after two evaluations without improvement, not after 27 steps
    kept = _weights(model, chain.adapter)
    assert all(torch.equal(kept[n], snapshots[0][n]) for n in kept)  # the best weights, not the last


def test_ctrl_c_keeps_the_best_adapter_and_saves_it_whole(tiny_dir, tmp_path, monkeypatch):
    import castline.evaluation.evaluate as evaluation
    from castline.evaluation.readers import LabeledText

    model = fresh(tiny_dir)
    chain = Classify(LABELS, model=model, calibrate=False)
    calls = iter([0.7, KeyboardInterrupt])

    def scripted_evaluate(chain_, data, batch_size=None):
        value = next(calls)
        if value is KeyboardInterrupt:
            raise KeyboardInterrupt
        return evaluation.Report(task="classify", n=len(data), metrics={"accuracy": value}, seconds=0)

    monkeypatch.setattr(evaluation, "evaluate", scripted_evaluate)
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "stale.txt").write_text("from an earlier run")
    settings = LoraSettings(rank=4, alpha=8, batch_size=2, epochs=2, learning_rate=5e-3, eval_every=2)
    report = chain.fine_tune(
        [({"text": t}, LABELS[i % 3]) for i, t in enumerate(TEXTS)],
        settings=settings,
        validate_on=[LabeledText(TEXTS[0], LABELS[0])],
        save_to=tmp_path / "clf",
    )
    assert report.interrupted and report.best_step == 2
    saved = {p.name for p in (tmp_path / "clf").iterdir()}
    assert saved == {"adapter_config.json", "adapter_model.safetensors", "castline.json"}  # replaced whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clf")]  # no staging left behind
    reloaded = fresh(tiny_dir)
    Classify(LABELS, model=reloaded, calibrate=False).use_adapter(tmp_path / "clf")
