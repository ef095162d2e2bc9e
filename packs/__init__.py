"""Foundry's built-in buildpacks (Heroku classic API), shipped as package data."""

from __future__ import annotations

from pathlib import Path

PACKS_DIR = Path(__file__).resolve().parent
