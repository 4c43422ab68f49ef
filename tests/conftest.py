from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    return FIXTURES / "gsm8k"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return FIXTURES / "tiny-qwen3"
