"""A test whose ../shared/data is missing skips with a reason here, and fails under CI (CI=true)."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, shared_data


def test_missing_data_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="absent"):
        shared_data("no-such-dataset")


def test_missing_data_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        shared_data("no-such-dataset")


def test_present_data_is_returned(monkeypatch):
    if not (SHARED_DATA / "backdoorllm").is_dir():
        shared_data("backdoorllm")  # skips (or fails under CI) saying why
    monkeypatch.setenv("CI", "true")
    assert shared_data("backdoorllm") == SHARED_DATA / "backdoorllm"
