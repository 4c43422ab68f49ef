import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.strategies import profile_for

settings.load_profile(profile_for(os.environ))

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    return FIXTURES / "gsm8k"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return FIXTURES / "tiny-qwen3"


@pytest.fixture(scope="session")
def gsm8k_problems(gsm8k_dir):
    """GSM8K's (train, test) rows, loaded once for the suite."""
    from harness.data import load_gsm8k

    return load_gsm8k("train", gsm8k_dir), load_gsm8k("test", gsm8k_dir)
