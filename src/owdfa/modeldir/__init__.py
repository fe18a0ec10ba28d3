"""Model directories: the card, the weights' checks and their reading and writing."""
