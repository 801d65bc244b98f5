"""Composition root: `python -m services.warehouse [serve|migrate]`."""

import pathlib

from services.runtime.server import main

from .wiring import wire

main("warehouse", pathlib.Path(__file__).parent / "migrations", wire)
