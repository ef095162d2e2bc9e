"""Foundry's node agent: stages source into droplets and runs instances (see DESIGN.md)."""
