"""Foundry's control plane: owns desired state and serves it over HTTP (see DESIGN.md)."""
