"""A user's script type-checks with mypy against the installed castline: chains are generic in
their output, so results have their real types (not ``Any``) and misuse is a type error."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

USER_SCRIPT = textwrap.dedent(
    """
    from typing import Literal

    from pydantic import BaseModel

    from castline.chains import (
        AnswerQuestion,
        Classify,
        Extract,
        MultiLabelClassify,
        RecognizeEntities,
        StructuredChain,
    )
    from castline.models import FakeEngine
    from castline.schemas import Regex


    class Person(BaseModel):
        name: str
        age: int


    model = FakeEngine()
    person = StructuredChain(Person, model=model).invoke("Anna is 31.")
    people = StructuredChain(Person, model=model).batch(["a", "b"])
    crowd = StructuredChain(list[Person], model=model).invoke("x")
    code = StructuredChain(Regex(r"[A-Z]{2}"), model=model).invoke("x")
    label = StructuredChain(Literal["a", "b"], model=model).invoke("x")
    reveal_type(person)
    reveal_type(people)
    reveal_type(crowd)
    reveal_type(code)
    reveal_type(Classify(["spam", "ham"], model=model).invoke("x"))
    reveal_type(MultiLabelClassify(["a", "b"], model=model).invoke("x"))
    reveal_type(RecognizeEntities(["person"], model=model).invoke("x"))
    reveal_type(AnswerQuestion(model=model).invoke({"question": "q", "context": "c"}))
    reveal_type(Extract(Person, model=model).invoke("x"))
    reveal_type(Extract(Person, many=True, model=model).invoke("x"))
    person.nickname  # a typo the checker must catch
    """
)

EXPECTED = [
    "Person",
    "list[Person]",
    "list[Person]",
    "str",
    "castline.schemas.results.Classification",
    "castline.schemas.results.MultiLabelClassification",
    "castline.schemas.results.Entities",
    "castline.schemas.results.Answer",
    "Person",
    "list[Person]",
]


def test_a_user_script_type_checks_with_real_result_types(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    # Run from the script's folder: castline is found where a user's checker finds it, installed.
    command = [sys.executable, "-m", "mypy", "--no-incremental", "--python-executable", sys.executable]
    result = subprocess.run(
        [*command, script.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert "Cannot find implementation or library stub" not in output, output
    revealed = re.findall(r'Revealed type is "([^"]+)"', output)
    names = [r.replace("user_script.", "").replace("builtins.", "") for r in revealed]
    assert names == EXPECTED, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) == 1 and '"Person" has no attribute "nickname"' in errors[0], output
