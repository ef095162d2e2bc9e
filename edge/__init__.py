"""Foundry's HTTP edge: routes requests by host name to running app instances."""
