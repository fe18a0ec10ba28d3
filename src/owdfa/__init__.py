"""owdfa: open-world deepfake attribution, as a DVC pipeline (stages/) and the `owdfa` command line."""
