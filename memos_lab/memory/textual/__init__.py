"""Declarative memory: explicit knowledge as text items, behind one interface (`base.TextualMemory`)."""
