"""The report of a run (report.html) and the comparison of runs (compare.html); pictures come from `sparseae.pictures`."""

from sparseae.pictures.features import feature_images, save_feature_grid
from sparseae.pictures.images import encode_png, image_grid, save_image_grid
from sparseae.report.html import write_comparison, write_report

__all__ = [
    "encode_png",
    "feature_images",
    "image_grid",
    "save_feature_grid",
    "save_image_grid",
    "write_comparison",
    "write_report",
]
