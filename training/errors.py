"""Typed errors of the training package; ``training.cli.main`` turns them into one-line exits."""

from edge_agent.contract.errors import GalaxyEdgeError


class TrainingError(GalaxyEdgeError):
    """A training or evaluation run that cannot go on: bad config, model, checkpoint or state."""


class ModelError(TrainingError):
    """A model name timm does not know, or pretrained weights that cannot be had or do not fit."""


class CheckpointError(TrainingError):
    """A checkpoint or run directory that is missing, corrupt or does not match the run."""


class UsageError(TrainingError):
    """Options, a config file or an input path that are wrong before any work starts (exit 2)."""
