"""Agents and skills shipped with Hero; also the examples skill developers copy."""
