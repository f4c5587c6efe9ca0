"""Hero: a runtime that packs 100–200 personal AI agents onto a 60 W edge node."""

__version__ = "0.1.0"
