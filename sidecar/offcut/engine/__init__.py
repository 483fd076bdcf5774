"""Inference and pixels: the pipeline, wire formats, exact resampling, refinement."""
