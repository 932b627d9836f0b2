"""Pictures of what a model learned."""

from sparseae.report.images import encode_png, image_grid, save_image_grid

__all__ = ["encode_png", "image_grid", "save_image_grid"]
