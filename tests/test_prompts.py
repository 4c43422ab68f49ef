"""The prompt templates shipped with the package."""

from harness.prompts import format_prompt, prompt_template

R1_ZERO = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> </think> "
    "and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>"
)


def test_r1_zero_template_is_cs336_text_without_trailing_newline():
    assert prompt_template("r1_zero") == R1_ZERO
    assert format_prompt("What is 2+2?", "r1_zero") == R1_ZERO.replace("{question}", "What is 2+2?")


def test_boxed_prompt():
    assert format_prompt("What is 2+2?", "boxed") == (
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    )


def test_braces_in_questions_survive():
    question = "Let {x} = 3 and f(x) = {question}. Find f."
    assert f"User: {question}\nAssistant" in format_prompt(question, "r1_zero")
    assert format_prompt(question, "boxed").startswith(question + "\n")
