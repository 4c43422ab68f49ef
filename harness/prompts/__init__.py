"""Prompt templates, shipped as package data.

Templates are `str.format` strings with one field, `question` (literal braces are doubled, as in
`\\boxed{{}}`). r1_zero.prompt is CS336's R1-Zero template and ends right after `<think>`, so the
model continues the reasoning; question_only.prompt is CS336's question-only template, the
question alone; boxed.prompt asks for the final answer in `\\boxed{}`.
"""

from functools import cache
from importlib import resources
from typing import Literal

PromptName = Literal["r1_zero", "question_only", "boxed"]
PROMPT_NAMES: tuple[PromptName, ...] = ("r1_zero", "question_only", "boxed")


def prompt_for(use_r1_zero_format: bool) -> PromptName:
    """The prompt `--use_r1_zero_format` names: R1-Zero, or the boxed one."""
    return "r1_zero" if use_r1_zero_format else "boxed"


def effective_prompt(prompt: PromptName | None, use_r1_zero_format: bool) -> PromptName:
    """The prompt a run uses: the one `--prompt` names, else the one `--use_r1_zero_format` does."""
    return prompt_for(use_r1_zero_format) if prompt is None else prompt


def answers_in_tags(prompt: PromptName) -> bool:
    """Whether responses answer in R1-Zero's <answer> tags (scored and stopped by them);
    the other prompts answer in `\\boxed{}` and stop at the end of the sequence."""
    return prompt == "r1_zero"


@cache
def prompt_template(prompt: PromptName) -> str:
    """The template text of the named prompt."""
    if prompt not in PROMPT_NAMES:
        raise ValueError(f"unknown prompt {prompt!r}; expected one of {', '.join(PROMPT_NAMES)}")
    return resources.files(__name__).joinpath(f"{prompt}.prompt").read_text(encoding="utf-8")


def format_prompt(question: str, prompt: PromptName) -> str:
    """The prompt for one question."""
    return prompt_template(prompt).format(question=question)
