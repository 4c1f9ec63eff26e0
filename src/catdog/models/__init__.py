"""Neural networks: shared layers, the VAE, the patch discriminator."""
