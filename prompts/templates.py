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
an error, and templates cannot reach Python internals. A template is self-contained (``include``,
``import`` and ``extends`` are refused when it is loaded) and bounded when it renders: at most
``RENDER_SECONDS`` of work (checked in every call and every ``range`` step), no string or list
repeated beyond ``MAX_RENDERED`` characters, no runaway recursion -- each a ``TemplateError``.
Shipped templates live next to this file as ``<name>.jinja``; ``load_template`` takes a shipped
name, a path, or a ``PromptTemplate``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from castline.schemas.errors import TemplateError

TEMPLATE_DIR = Path(__file__).resolve().parent
ROLES = ("system", "user", "assistant")
# Names the renderer provides itself; they are not inputs the caller must supply.
_PROVIDED = frozenset({"message"})

RENDER_SECONDS = 2.0  # a prompt renders in milliseconds; more is a loop gone wrong
MAX_RENDERED = 1_000_000  # characters a single repetition may produce
_deadline = threading.local()


def _check_deadline() -> None:
    limit = getattr(_deadline, "at", None)
    if limit is not None and time.monotonic() > limit:
        raise TemplateError(f"template rendering ran over {RENDER_SECONDS} s; simplify its loops")


def _bounded_range(*args: int) -> Iterator[int]:
    # safe_range refuses more than 100,000 steps at once; nested loops are caught by the deadline.
    for i, value in enumerate(safe_range(*args)):
        if i % 1024 == 0:
            _check_deadline()
        yield value


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with every call and repetition checked against the render budget."""

    intercepted_binops = frozenset({"*", "**"})

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_RENDERED
                ):
                    raise TemplateError(
                        f"template repeats a value {times} times, over {MAX_RENDERED} characters"
                    )
        if operator == "**" and isinstance(right, int) and abs(right) > 1000:
            raise TemplateError(f"template raises to the power {right}; too large to compute")
        return super().call_binop(context, operator, left, right)


_ENV = _BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)
_ENV.globals["range"] = _bounded_range
_OTHER_FILES = (jinja2.nodes.Include, jinja2.nodes.Import, jinja2.nodes.FromImport, jinja2.nodes.Extends)

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
        if any(True for _ in ast.find_all(_OTHER_FILES)):
            raise TemplateError(
                f"template {self.name} includes, imports or extends another template; castline "
                "templates are self-contained: put the shared text in this file or pass it as a variable"
            )
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
        _deadline.at = time.monotonic() + RENDER_SECONDS
        try:
            text = self._compiled.render({**values, "message": _collector(messages)})
        except TemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"template {self.name}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.name} failed to render: {exc}") from exc
        except RecursionError as exc:
            raise TemplateError(f"template {self.name} recurses without end (a macro calls itself)") from exc
        except (TypeError, ValueError, OverflowError, ArithmeticError, MemoryError) as exc:
            raise TemplateError(
                f"template {self.name} failed to render: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _deadline.at = None
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
