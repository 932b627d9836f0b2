"""Pictures of data and of what each latent stands for, as PNG: what training writes (reconstructions,
TensorBoard's feature grid) and the report shows. Below both: it reads no run directory."""

from sparseae.pictures.features import feature_images, feature_tiles, image_shape, save_feature_grid
from sparseae.pictures.images import encode_png, image_grid, save_image_grid

__all__ = ["encode_png", "feature_images", "feature_tiles", "image_grid", "image_shape", "save_feature_grid", "save_image_grid"]
