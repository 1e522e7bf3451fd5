"""Pretraining: the `pretrain` configs, token windows over shards, the Lightning system, runs."""
