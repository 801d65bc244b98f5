"""Composition root: `python -m services.orders [serve|migrate]`."""

import pathlib

from services.runtime.server import main

from .wiring import wire

main("orders", pathlib.Path(__file__).parent / "migrations", wire)
