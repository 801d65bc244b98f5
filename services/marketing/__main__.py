"""Composition root: `python -m services.marketing [serve|migrate]`."""

import pathlib

from services.runtime.server import main

from .wiring import wire

main("marketing", pathlib.Path(__file__).parent / "migrations", wire)
