"""Decoder definitions, checkpoint loading, dummy weights and presets."""
