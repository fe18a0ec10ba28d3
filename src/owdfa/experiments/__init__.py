"""Research tooling over the pipeline: experiment grids and the regime study."""
