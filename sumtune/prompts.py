"""Instruction templates. A template is text with one ``{dialogue}`` placeholder."""

from __future__ import annotations

PLACEHOLDER = "{dialogue}"

# The instruction the seed experiments used with FLAN-T5.
SEED_TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary: "

# Named templates; `data.template` may hold one of these names or a literal template.
TEMPLATES = {
    "seed": SEED_TEMPLATE,
    "brief": "Briefly summarize this dialogue:\n\n{dialogue}\n\nSummary: ",
    "tldr": "{dialogue}\n\nTL;DR: ",
}


def resolve_template(name_or_text: str) -> str:
    return TEMPLATES.get(name_or_text, name_or_text)


def split_template(template: str) -> tuple[str, str]:
    """The text before and after the dialogue."""
    template = resolve_template(template)
    prefix, _, suffix = template.partition(PLACEHOLDER)
    return prefix, suffix


def format_prompt(template: str, dialogue: str) -> str:
    # str.replace, not str.format: a template may contain other braces.
    return resolve_template(template).replace(PLACEHOLDER, dialogue)
