"""Pictures of what a model learned."""

from sparseae.report.features import feature_images, save_feature_grid
from sparseae.report.html import write_comparison, write_report
from sparseae.report.images import encode_png, image_grid, save_image_grid

__all__ = [
    "encode_png",
    "feature_images",
    "image_grid",
    "save_feature_grid",
    "save_image_grid",
    "write_comparison",
    "write_report",
]
