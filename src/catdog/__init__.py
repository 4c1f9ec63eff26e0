"""catdog: a class-conditional latent-diffusion generator for 48x48 cats and dogs.

Stage 1 is a VAE (with perceptual, adversarial, latent-classifier and center losses) whose 2D
latent the stage-2 diffusion UNet models. See README.md for the commands.
"""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("cat", "dog")  # label 0 = cat, 1 = dog
