"""Chronotope: text-to-video diffusion with a causal 3D VAE, spacetime patches and a DiT."""
__version__ = "0.1.0"
