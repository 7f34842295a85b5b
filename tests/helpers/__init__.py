"""Code the tests share that is not a fixture: the repository's paths, the sweep runner, headless
Chromium. Fixtures live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root (tests/helpers/ -> tests/ -> root)
GOLDEN = ROOT / "tests" / "golden"
DATA = ROOT / "tests" / "data"
