"""The architecture rules are tests too: services meet only through protos and events, and the API passes
buf lint."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def test_import_contracts_hold():
    result = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes():
    image = ROOT / "build" / "omo.binpb"
    assert image.exists(), "run `make gen` first"
    result = subprocess.run([str(BIN / "buf"), "lint", str(image), "--config", "proto/buf.yaml"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
