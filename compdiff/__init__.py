"""compdiff: compositional generation with energy-based diffusion models and annealed MCMC."""
