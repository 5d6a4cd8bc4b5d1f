"""Prompt templates: Jinja files rendered, sandboxed and strict, into chat messages.

A template marks its chat turns with call blocks::

    {% call message("system") %}You sort support tickets.{% endcall %}
    {% for ex in examples %}
    {% call message("user") %}{{ ex.text }}{% endcall %}
    {% call message("assistant") %}{{ ex.label }}{% endcall %}
    {% endfor %}
    {% call message("user") %}{{ text }}{% endcall %}

Text outside call blocks is ignored; a template with no call block is one user message. The
turn structure comes from the template itself, never from parsing rendered text, so a user value
that looks like a role marker (or like ``{{ ... }}``) stays plain data inside its turn.

Rendering uses an immutable sandboxed environment with ``StrictUndefined``: a missing variable is
an error, and templates cannot reach Python internals. Shipped templates live next to this file
as ``<name>.jinja``; ``load_template`` takes a shipped name, a path, or a ``PromptTemplate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from castline.schemas.errors import TemplateError

TEMPLATE_DIR = Path(__file__).resolve().parent
ROLES = ("system", "user", "assistant")
# Names the renderer provides itself; they are not inputs the caller must supply.
_PROVIDED = frozenset({"message"})

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)

Message = dict[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    """A compiled prompt template and the variables it needs."""

    source: str
    name: str = "<string>"
    variables: frozenset[str] = field(init=False)
    _compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            ast = _ENV.parse(self.source)
            compiled = _ENV.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template {self.name} does not parse: {exc.message} (line {exc.lineno})"
            ) from exc
        object.__setattr__(self, "variables", frozenset(meta.find_undeclared_variables(ast) - _PROVIDED))
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def from_string(cls, source: str, name: str = "<string>") -> PromptTemplate:
        """A template from Jinja source written by the developer (never from end-user text)."""
        return cls(source, name)

    @classmethod
    def from_path(cls, path: str | Path) -> PromptTemplate:
        """A template read from a ``.jinja`` file."""
        path = Path(path)
        if not path.is_file():
            raise TemplateError(f"template file {path} does not exist")
        return cls(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_name(cls, name: str) -> PromptTemplate:
        """A template shipped with castline, by name (``prompts/<name>.jinja``)."""
        path = TEMPLATE_DIR / f"{name}.jinja"
        if not path.is_file():
            raise TemplateError(
                f"no shipped template named {name!r}; shipped: {sorted(shipped_templates())}. "
                "Pass a path to a .jinja file or PromptTemplate.from_string(...) for your own"
            )
        return cls(path.read_text(encoding="utf-8"), name)

    def check_variables(self, available: Iterable[str], where: str = "the chain input") -> None:
        """Raise ``TemplateError`` unless every variable the template uses is in ``available``."""
        missing = self.variables - set(available)
        if missing:
            raise TemplateError(
                f"template {self.name} uses {sorted(missing)}, which {where} does not provide "
                f"(it provides {sorted(set(available))}); rename the template variables or add "
                "the fields"
            )

    def render(self, values: Mapping[str, Any]) -> list[Message]:
        """Render into chat messages; ``values`` are data and are never evaluated as templates."""
        self.check_variables(values.keys(), "the values given")
        messages: list[Message] = []
        try:
            text = self._compiled.render({**values, "message": _collector(messages)})
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {self.name}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.name} failed to render: {exc}") from exc
        if not messages:
            messages.append({"role": "user", "content": text.strip()})
        return messages


def _collector(messages: list[Message]) -> Callable[..., str]:
    def message(role: str, caller: Callable[[], str] | None = None) -> str:
        if role not in ROLES:
            raise TemplateError(f"message role must be one of {ROLES}, not {role!r}")
        if caller is None:
            raise TemplateError('use message() as a call block: {% call message("user") %}...{% endcall %}')
        messages.append({"role": role, "content": caller().strip()})
        return ""

    return message


def shipped_templates() -> list[str]:
    """Names of the templates that ship with castline."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def load_template(template: str | Path | PromptTemplate) -> PromptTemplate:
    """A template from a shipped name, a ``.jinja`` path, or an existing ``PromptTemplate``."""
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, Path) or str(template).endswith(".jinja") or "/" in str(template):
        return PromptTemplate.from_path(template)
    return PromptTemplate.from_name(template)
