"""Experiments: plain functions from a config (and a tracker for series) to a flat dict of metrics."""
