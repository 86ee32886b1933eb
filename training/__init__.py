"""Training of the galaxy classifier (``galaxy-train``): data, recipe, checkpoints, reports.

Imports torch and timm; the runtime package ``edge_agent`` never imports this one.
"""
