"""Invariants of the GSM8K reward under generated responses (hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

# _NUMBER and _value are private: the reference is a plain left-to-right scan of the whole text.
from harness.rewards import _NUMBER, _value, extract_answer, gsm8k_reward_fn, normalize_number

# Per test, not a profile: loading a profile here would change every other module's settings too.
MODEST = settings(max_examples=150, deadline=None)

# Pieces that steer generated text into the reward's branches: tags, boxes, braces, numbers.
TAGS = st.sampled_from(["<answer>", "</answer>", "</think>", "<think>", "\\boxed{", "\\frac{"])
SYMBOLS = st.sampled_from(["{", "}", "{,}", "\\,", "$", "%", "-", "−", ",", ".", "/", " ", "\n"])
NOISE = st.sampled_from(["0", "7", "72", "1,234", "🎉", "答", "\u200f"])
TEXT = st.lists(TAGS | SYMBOLS | NOISE | st.text(max_size=20), max_size=30).map("".join)
# Numbers in every written form, and glue that may or may not join them to their neighbours.
NUMBERS = st.sampled_from(["72", "1,234", "1{,}234", "1\\,234", ".5", "3 / 4", "-$5", "$ 5", "−7"])
FRACS = st.sampled_from(["\\frac{-3}{4}", "\\dfrac{3}{4}", "\\tfrac { 1 } { 2 }"])
GLUE = st.sampled_from([",", ".", "...", "-", "$", "\\", "{", "}", "/", " ", "\n", "a", "d", "é"])
NUMBERISH = st.lists(NUMBERS | FRACS | GLUE | st.text(max_size=3), max_size=20).map("".join)
# Reasoning with no tag, box or brace in it, so the final answer is the only one.
PLAIN_REASONING = st.text(alphabet=st.characters(exclude_characters="<>\\{}"), max_size=200)
INTEGERS = st.integers(min_value=-(10**12), max_value=10**12)
LARGE_INTEGERS = st.integers(min_value=1000, max_value=10**15) | st.integers(
    min_value=-(10**15), max_value=-1000
)
FORMATS = st.booleans()


def with_separators(number: int) -> str:
    return f"{number:,}"


def answer_templates(number: str) -> list[tuple[str, bool]]:
    """The correct answer written where each extraction rule finds it, with its format flag."""
    return [
        (f" </think> <answer>{number}</answer>", True),
        (f" </think> <answer>\\boxed{{{number}}}</answer>", True),
        (f" The answer is \\boxed{{{number}}}.", False),
        (f" So the answer is {number} dollars.", False),
    ]


@MODEST
@given(response=TEXT, truth=INTEGERS, use_r1_zero_format=FORMATS)
def test_reward_never_raises_and_takes_only_its_four_values(response, truth, use_r1_zero_format):
    reward = gsm8k_reward_fn(response, str(truth), use_r1_zero_format)
    assert set(reward) == {"reward", "format_reward", "answer_reward"}
    assert reward["format_reward"] in (0.0, 1.0)
    assert reward["answer_reward"] in (0.0, 1.0)
    assert reward["reward"] == 0.2 * reward["format_reward"] + 0.8 * reward["answer_reward"]
    assert reward["reward"] in (0.0, 0.2, 0.8, 1.0)


@MODEST
@given(response=st.text(), truth=INTEGERS, use_r1_zero_format=FORMATS)
def test_reward_never_raises_on_any_unicode(response, truth, use_r1_zero_format):
    assert gsm8k_reward_fn(response, str(truth), use_r1_zero_format)["reward"] in (0, 0.2, 0.8, 1)


@MODEST
@given(response=TEXT, truth=INTEGERS)
def test_answer_reward_ignores_the_format_flag(response, truth):
    r1_zero = gsm8k_reward_fn(response, str(truth), use_r1_zero_format=True)
    boxed = gsm8k_reward_fn(response, str(truth), use_r1_zero_format=False)
    assert r1_zero["answer_reward"] == boxed["answer_reward"]


@MODEST
@given(response=TEXT, truth=INTEGERS, other_truth=INTEGERS, use_r1_zero_format=FORMATS)
def test_format_reward_ignores_the_ground_truth(response, truth, other_truth, use_r1_zero_format):
    first = gsm8k_reward_fn(response, str(truth), use_r1_zero_format)
    second = gsm8k_reward_fn(response, str(other_truth), use_r1_zero_format)
    assert first["format_reward"] == second["format_reward"]


@MODEST
@given(reasoning=TEXT, truth=LARGE_INTEGERS, template=st.integers(0, 3))
def test_thousands_separators_do_not_change_the_reward(reasoning, truth, template):
    (bare, use_r1_zero_format), (separated, _) = (
        answer_templates(str(truth))[template],
        answer_templates(with_separators(truth))[template],
    )
    assert gsm8k_reward_fn(reasoning + bare, str(truth), use_r1_zero_format) == gsm8k_reward_fn(
        reasoning + separated, str(truth), use_r1_zero_format
    )


@MODEST
@given(reasoning=TEXT, truth=LARGE_INTEGERS, answer=LARGE_INTEGERS)
def test_separated_ground_truth_equals_bare_ground_truth(reasoning, truth, answer):
    response = f"{reasoning} </think> <answer>{answer}</answer>"
    assert gsm8k_reward_fn(response, f"#### {with_separators(truth)}") == gsm8k_reward_fn(
        response, str(truth)
    )


@MODEST
@given(reasoning=PLAIN_REASONING, truth=INTEGERS, template=st.integers(0, 2))
def test_correct_answer_in_the_prompted_format_earns_full_reward(reasoning, truth, template):
    for number in (str(truth), with_separators(truth), f"{truth}.0"):
        ending, use_r1_zero_format = answer_templates(number)[template]
        assert gsm8k_reward_fn(reasoning + ending, str(truth), use_r1_zero_format)["reward"] == 1.0


@MODEST
@given(reasoning=PLAIN_REASONING, truth=INTEGERS, wrong=INTEGERS, template=st.integers(0, 3))
def test_a_different_number_earns_no_answer_reward(reasoning, truth, wrong, template):
    ending, use_r1_zero_format = answer_templates(str(wrong))[template]
    reward = gsm8k_reward_fn(reasoning + ending, str(truth), use_r1_zero_format)
    assert reward["answer_reward"] == float(wrong == truth)


@MODEST
@given(thinking=TEXT, inserted=TEXT, answer=TEXT)
def test_text_added_to_the_thinking_does_not_change_the_extracted_answer(
    thinking, inserted, answer
):
    ending = f"</think> <answer>{answer.replace('<', '')}</answer>"
    assert extract_answer(thinking + inserted + ending) == extract_answer(thinking + ending)


@MODEST
@given(reasoning=TEXT, truth=INTEGERS)
def test_a_second_answer_block_removes_the_format_reward(reasoning, truth):
    block = f"<answer>{truth}</answer>"
    response = f"{reasoning} </think> {block} {block}"
    assert gsm8k_reward_fn(response, str(truth))["format_reward"] == 0.0


@MODEST
@given(text=NUMBERISH)
def test_normalize_number_reads_the_last_number_of_a_full_scan(text):
    matches = list(_NUMBER.finditer(text))
    assert normalize_number(text) == (_value(matches[-1]) if matches else None)
