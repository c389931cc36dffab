"""Parallel dimensions (picotron-style: a file per dimension, its communication in a `*_comm` sibling):
collectives, data, tensor and pipeline parallelism, their 3-D composition, activation checkpointing and
gradient compression. Imports only `core`."""
