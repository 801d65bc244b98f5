"""Composition root: `python -m services.settlement [serve|migrate]`."""

import pathlib

from services.runtime.server import main

from .wiring import wire

main("settlement", pathlib.Path(__file__).parent / "migrations", wire)
