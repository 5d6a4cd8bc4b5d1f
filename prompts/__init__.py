"""Jinja prompt templates (``.jinja`` files here) and their sandboxed renderer."""

from castline.prompts.templates import Message, PromptTemplate, load_template, shipped_templates

__all__ = ["Message", "PromptTemplate", "load_template", "shipped_templates"]
