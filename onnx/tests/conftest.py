"""Shared fixtures for the onnx/ tests: paths, and tiny models exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ONNX_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ONNX_DIR))

REPO_ROOT = ONNX_DIR.parent
NIH = REPO_ROOT / "tests" / "fixtures" / "nih"
COMMITTED_TINY = ONNX_DIR / "tiny"


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    return NIH


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """Tiny models exported afresh (seed 0) into a temporary folder, with their parity figures
    over all 12 real NIH images."""
    from cxr_models import export

    out = tmp_path_factory.mktemp("tiny")
    worst = export.run(out, tiny=True, seed=0, image_dir=NIH, parity_images=12)
    return out, worst
