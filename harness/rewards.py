r"""GSM8K reward: answer extraction, exact number comparison and the format rule (pure).

``gsm8k_reward_fn(response, ground_truth, use_r1_zero_format)`` returns
``{"reward", "format_reward", "answer_reward"}``, each of the last two in {0, 1}, and
``reward = 0.2 * format_reward + 0.8 * answer_reward``. Where a two-argument reward function is
expected (``compute_group_normalized_rewards``), bind the flag with ``make_reward_fn(flag)``, which
is ``functools.partial(gsm8k_reward_fn, use_r1_zero_format=flag)``.

Extraction, the same for both prompts: the content of the last complete ``<answer>...</answer>``
block, where a ``\boxed{...}`` inside it wins over the rest of its text; else the content of the
last ``\boxed{...}`` with balanced braces; else the last number of the response. The extracted
text's value is its last number (``normalize_number``), compared exactly with the ground truth.

Format: with the R1-Zero prompt (it ends in ``<think>``) the response closes ``</think>`` and after
it holds the response's only answer block, whose answer is not blank. With the plain prompt the
response holds exactly one complete ``\boxed{}``, not blank. Unclosed blocks and boxes do not count.

Every scan is a compiled regex or one linear pass over braces, so long responses stay fast.
"""

import functools
import re
from collections import deque
from collections.abc import Callable, Mapping
from fractions import Fraction

# A reward function: (response, ground truth) -> scores by name, "reward" among them.
RewardFn = Callable[[str, str], Mapping[str, float]]


FORMAT_WEIGHT = 0.2
ANSWER_WEIGHT = 0.8

_THINK_CLOSE = "</think>"
# A block's content holds no answer tag, so repeated or unclosed openers never merge into one block.
_ANSWER_BLOCK = re.compile(r"<answer>([^<]*(?:<(?!/?answer>)[^<]*)*)</answer>")
_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")

# Thousands separators: ",", LaTeX "{,}" and the thin space "\,", each followed by exactly 3 digits.
# GSM8K writes ".5" for 0.5; a dot after a dot or digit is an ellipsis or a second point instead.
_UNSIGNED = (
    r"(?:(?:[0-9]{1,3}(?:(?:,|\{,\}|\\,)[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?"
    r"|(?<![0-9.])\.[0-9]+)"
)
_NUMBER = re.compile(
    # The look-ahead only makes scanning fast: most positions fail on their first character.
    r"(?=[-−$\\.0-9])"
    # A minus right after a digit, letter or closing bracket is a subtraction, not a sign.
    r"(?P<neg>(?<![0-9A-Za-z.)\]}])[-−])?(?:\\?\$\s*)?"
    rf"(?:\\[dt]?frac\s*\{{\s*(?P<frac_num>[-−]?{_UNSIGNED})\s*\}}"
    rf"\s*\{{\s*(?P<frac_den>[-−]?{_UNSIGNED})\s*\}}"
    rf"|(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?)"
)

# Greedy prefixes find the last digit, and the last character no number can contain, from the end.
_LAST_DIGIT = re.compile(r"(?s:.*)[0-9]")
_LAST_BARRIER = re.compile(r"(?s:.*)[^-−0-9,.{}\\$/\sdfract]")


def _digits(number: str) -> str:
    return number.replace("{,}", "").replace("\\,", "").replace(",", "").replace("−", "-")


def _value(number: re.Match[str]) -> Fraction | None:
    numerator = number["num"] or number["frac_num"]
    denominator = number["den"] or number["frac_den"]
    try:
        value = Fraction(_digits(numerator))
        if denominator:
            value /= Fraction(_digits(denominator))
    except (ValueError, ZeroDivisionError):  # a zero denominator, or more digits than int() takes
        return None
    return -value if number["neg"] else value


def _last_number(text: str) -> re.Match[str] | None:
    """The last match of a left-to-right scan, found without scanning the whole text."""
    last_digit = _LAST_DIGIT.match(text)
    if last_digit is None:
        return None
    # The last match holds the last digit, and no match spans a barrier character, so a scan from
    # the last barrier before that digit finds the same last match as a scan from the start.
    barrier = _LAST_BARRIER.match(text, 0, last_digit.end())
    last_match = deque(_NUMBER.finditer(text, barrier.end() if barrier else 0), maxlen=1)
    return last_match[0]


def _boxed_contents(text: str) -> list[str]:
    r"""Contents of every ``\boxed{...}`` whose braces balance, in order of opening."""
    openers = [match.end() - 1 for match in _BOX_OPEN.finditer(text)]
    if not openers:
        return []
    close_of: dict[int, int] = {}
    open_stack: list[int] = []
    for brace in _BRACE.finditer(text, openers[0]):
        if brace.group() == "{":
            open_stack.append(brace.start())
        elif open_stack:
            close_of[open_stack.pop()] = brace.start()
    return [text[opener + 1 : close_of[opener]] for opener in openers if opener in close_of]


def _block_answer(block_content: str) -> str:
    boxes = _boxed_contents(block_content)
    return (boxes[-1] if boxes else block_content).strip()


def extract_answer(response: str) -> str | None:
    r"""The final answer's text: last answer block (its last box if any), else last box, else last
    number; None when the response has none of them. A blank block or box gives ``""``."""
    blocks = _ANSWER_BLOCK.findall(response)
    if blocks:
        return _block_answer(blocks[-1])
    boxes = _boxed_contents(response)
    if boxes:
        return boxes[-1].strip()
    number = _last_number(response)
    return None if number is None else number.group()


def normalize_number(text: str) -> Fraction | None:
    r"""Exact value of the last number in ``text``, or None if there is none.

    A number is an optional sign (``-`` or ``−``) and ``$``, then an integer (thousands separators
    ``1,234``, ``1{,}234``, ``1\,234``) or decimal, optionally ``/ denominator``; or ``\frac{a}{b}``
    (also ``\dfrac``, ``\tfrac``). Text around it (``%``, units, punctuation) is ignored.
    """
    number = _last_number(text)
    return None if number is None else _value(number)


@functools.lru_cache(maxsize=1 << 16)  # a group repeats its ground truth group_size times
def parse_ground_truth(answer_field_or_number: str) -> Fraction:
    """Value of a GSM8K ``answer`` field (the number after its last ``####``) or a bare number."""
    text = answer_field_or_number.rpartition("####")[2].strip()
    number = _NUMBER.fullmatch(text)
    value = None if number is None else _value(number)
    if value is None:
        raise ValueError(
            "ground truth must be a number or a GSM8K answer ending in '#### <number>', got "
            f"{answer_field_or_number[-200:]!r}"
        )
    return value


def _has_r1_zero_format(response: str) -> bool:
    think_end = response.rfind(_THINK_CLOSE)
    blocks = list(_ANSWER_BLOCK.finditer(response))
    return (
        think_end >= 0
        and len(blocks) == 1
        and blocks[0].start() >= think_end + len(_THINK_CLOSE)
        and _block_answer(blocks[0][1]) != ""
    )


def _has_boxed_format(response: str) -> bool:
    boxes = _boxed_contents(response)
    return len(boxes) == 1 and boxes[0].strip() != ""


def gsm8k_reward_fn(
    response: str, ground_truth: str, use_r1_zero_format: bool = True
) -> dict[str, float]:
    """Reward of one response; never raises on a response, raises ValueError on a bad truth."""
    target = parse_ground_truth(ground_truth)
    has_format = (_has_r1_zero_format if use_r1_zero_format else _has_boxed_format)(response)
    answer = extract_answer(response)
    format_reward = float(has_format)
    answer_reward = float(answer is not None and normalize_number(answer) == target)
    return {
        "reward": FORMAT_WEIGHT * format_reward + ANSWER_WEIGHT * answer_reward,
        "format_reward": format_reward,
        "answer_reward": answer_reward,
    }


def make_reward_fn(use_r1_zero_format: bool) -> RewardFn:
    """``gsm8k_reward_fn`` with the format flag bound, for callers passing (response, truth)."""
    return functools.partial(gsm8k_reward_fn, use_r1_zero_format=use_r1_zero_format)
