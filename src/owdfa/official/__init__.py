"""The CAL authors' released checkpoints: safe reading, conversion to a model directory, the import stage."""
