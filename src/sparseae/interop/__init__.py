"""Moving models between sparseae and other SAE toolkits' file layouts.

Nothing here needs the other toolkit installed: each format is read and written directly.
"""

from sparseae.interop.saelens import export_saelens, import_saelens

__all__ = ["export_saelens", "import_saelens"]
