"""Generative models under study and their generation on GPU workers."""
