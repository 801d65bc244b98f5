"""Composition root: `python -m services.catalog [serve|migrate]`."""

import pathlib

from services.runtime.server import main

from .wiring import wire

main("catalog", pathlib.Path(__file__).parent / "migrations", wire)
