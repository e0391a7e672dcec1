"""Other memory systems behind memos_lab's textual-memory interface, so every experiment runs on them unchanged."""
