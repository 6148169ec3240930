"""Recorded play: the episode store, the segment loader for training, and collection."""
