"""Image diffusion: datasets, UNet2DModel builders, the training loop and sampling."""
