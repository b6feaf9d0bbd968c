"""Shared fixtures: paths to the shipped real traces, and temporary output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[1] / "burstbench" / "data" / "traces"


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    return TRACES


@pytest.fixture(scope="session")
def azure_conv() -> Path:
    return TRACES / "azure_llm_2023_conv.csv"


@pytest.fixture(scope="session")
def burstgpt_v1() -> Path:
    return TRACES / "burstgpt_v1_head400.csv"


@pytest.fixture(scope="session")
def burstgpt_v3() -> Path:
    return TRACES / "burstgpt_v3_head400.csv"


@pytest.fixture(scope="session")
def mooncake() -> Path:
    return TRACES / "mooncake_synthetic.jsonl"
