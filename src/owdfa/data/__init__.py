"""Data: benchmark sources, indexing, protocols, splits, the face cache and training views."""
