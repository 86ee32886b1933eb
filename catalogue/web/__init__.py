"""The live page served by the catalogue writer (``server``) and its static files."""
