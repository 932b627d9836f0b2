"""Temporary: the CLI still imports from here while it is split (issue 16); removed once it reads sparseae.interop."""

from sparseae.interop.hub import load_hub, looks_like_repo_id, model_card, publish_folder  # noqa: F401
from sparseae.interop.onnx import export_onnx  # noqa: F401
