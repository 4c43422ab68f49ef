"""Prompt templates, shipped as package data.

Templates are `str.format` strings with one field, `question` (literal braces are doubled, as in
`\\boxed{{}}`). r1_zero.prompt is CS336's R1-Zero template and ends right after `<think>`, so the
model continues the reasoning; boxed.prompt asks for the final answer in `\\boxed{}`.
"""

from functools import cache
from importlib import resources


@cache
def prompt_template(use_r1_zero_format: bool) -> str:
    """The template text: R1-Zero when asked, else the plain step-by-step/boxed one."""
    name = "r1_zero.prompt" if use_r1_zero_format else "boxed.prompt"
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def format_prompt(question: str, use_r1_zero_format: bool) -> str:
    """The prompt for one question."""
    return prompt_template(use_r1_zero_format).format(question=question)
