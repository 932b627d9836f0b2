"""Other tools' formats, one module each: ONNX graphs (`onnx`), Hugging Face Hub model folders (`hub`),
SAELens's files (`saelens`), EleutherAI sparsify's files (`sparsify`).

Nothing here needs the other toolkit installed to write its files: each format is written directly
(ONNX needs the `onnx` package; loading by repo id needs `huggingface_hub`).
"""

from sparseae.interop.hub import load_hub, model_card, publish_folder
from sparseae.interop.onnx import export_onnx
from sparseae.interop.saelens import export_saelens, import_saelens
from sparseae.interop.sparsify import export_sparsify, import_sparsify

__all__ = [
    "export_onnx",
    "export_saelens",
    "export_sparsify",
    "import_saelens",
    "import_sparsify",
    "load_hub",
    "model_card",
    "publish_folder",
]
