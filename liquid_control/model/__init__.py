"""Torch-only model code: wirings, liquid cells, encoder, policy, checkpoints, export."""
