"""Training: a run's config and state, samplers, views, the one loop, checkpoints, curves, the pretrain/train stages."""
