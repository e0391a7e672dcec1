"""Experiment trackers, selected by the `logger` config group."""
