"""What data to load: [`DataConfig`][sparseae.data.DataConfig] for every source, and
[`ActivationConfig`][sparseae.data.ActivationConfig] for a language model's activations.

Configs only: nothing here reads data or imports a source's module.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from sparseae.data.tables import DELIMITER_NAMES, delimiter_char
from sparseae.errors import SparseAEError, check

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class ActivationConfig:
    """Which activations of which language model, computed on which text."""

    model: str
    """Hugging Face model name (e.g. gpt2, sentence-transformers/all-MiniLM-L6-v2) or a local directory saved with
    save_pretrained: a causal language model, or an encoder such as BERT (loaded without a head; no CE loss recovered)."""
    module: str
    """Dotted name of the module whose output is collected, e.g. transformer.h.6: the output of a GPT-2 block is the residual
    stream after that block (block i = hidden_states[i + 1] of the model, except the last block, whose hidden state Hugging Face
    reports after the final layer norm); BERT's encoder.layer.i is hidden_states[i + 1]. Several modules, collected in one
    forward pass: a comma list or glob patterns, matched one dotted part at a time (encoder.layer.* is BERT's layers,
    transformer.h.*.mlp GPT-2's MLPs); cache-activations writes one cache per module, under OUT/<module name>/."""
    text: str
    """The documents: a .txt file (documents separated by blank lines), a directory of .txt files (read recursively, in sorted
    order), or hf:<dataset>[:<config>] for a Hugging Face data set (streamed)."""
    text_column: str = "text"
    """Column of the Hugging Face data set that holds the text."""
    split: str = "train"
    """Split of the Hugging Face data set."""
    context_length: int = 128
    """Tokens per sequence, BOS (an encoder's [CLS] and [SEP]) included; longer documents are cut into several sequences,
    each starting with BOS (each framed by [CLS] and [SEP])."""
    tokens: int = 1_000_000
    """How many activation rows (tokens) to collect."""
    batch_size: int = 8
    """Sequences per forward pass."""
    exclude_bos: bool = True
    """Leave the BOS position out of the rows (and unreplaced when measuring CE loss recovered): its activation is an outlier
    that no document token resembles. No effect when the tokenizer has no BOS token. For an encoder, the [CLS] and [SEP] that
    frame each sequence are left out: the rows are the real word pieces."""
    device: str = "auto"
    """Where the language model runs: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""

    def __post_init__(self) -> None:
        for name in ("model", "module", "text", "text_column", "split", "device"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SparseAEError(name, expected="a non-empty string", got=repr(value), fix=f"Set {name}.")
        if any(not part.strip() for part in self.module.split(",")):
            raise SparseAEError(
                "module",
                expected="module names or patterns, comma-separated",
                got=repr(self.module),
                fix="Leave out the empty item, e.g. encoder.layer.2,encoder.layer.4.",
            )
        if self.text.startswith("hf:") and not self.text[3:].split(":")[0]:
            raise SparseAEError(
                "text",
                expected="hf:<dataset>[:<config>]",
                got=repr(self.text),
                fix="Name the data set, e.g. hf:roneneldan/TinyStories.",
            )
        for name, low in (("context_length", 2), ("tokens", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SparseAEError(name, expected=f"an integer >= {low}", got=repr(value), fix=f"Set {name} to at least {low}.")
        if not _DEVICE.fullmatch(self.device):
            raise SparseAEError(
                "device", expected="auto, cpu, cuda, cuda:N or mps", got=repr(self.device), fix="Pick one of those."
            )


@dataclass(frozen=True)
class DataConfig:
    """Where a data set comes from, so a run can load it again (resume, eval)."""

    source: str = "mnist"
    """What to train on: 'mnist' (shipped), 'fashion-mnist' or 'kmnist' (downloaded on first
    use); an array file (.npy .npz .safetensors .pt .csv .parquet); a directory of images
    (labels from sub-folder names); a directory of MNIST-layout IDX files; a shard cache
    (a directory with manifest.json, e.g. from `sparseae cache-activations`); 'patches' or
    'patches:PATH' (natural-image patches of scikit-learn's photos or of your images); or
    'lm' (language-model activations, set by the --lm-* flags)."""
    test_source: str | None = None
    """Test samples from a separate file or directory, in the same form as the source.
    Otherwise sources without a test split hold out --test-fraction of their rows."""
    test_fraction: float = 0.1
    """Share of the rows held out for testing when the source has no test split (random
    blocks of neighbouring rows, the same for every run on the same file)."""
    train_limit: int | None = None
    """Use only the first N training samples (all when unset)."""
    test_limit: int | None = None
    """Use only the first N test samples (all when unset)."""
    key: str | None = None
    """The array holding the samples in a .npz, .safetensors or .pt file with several
    (found by itself for one array, 'x', or Keras' x_train/x_test)."""
    label_column: str | None = None
    """Labels: a CSV/Parquet column (name or number) or an array name in .npz/.safetensors/.pt.
    A column of whole numbers gives those classes; one of words ('cat', 'dog') gives classes
    0, 1, ... in sorted order, named by the words."""
    text_column: str | None = None
    """A CSV/Parquet column holding the text of each row (what an embedding row embeds): kept
    to show in the report, never trained on."""
    texts: str | None = None
    """A file with the text of each row of the data: .txt (one line per row) or .jsonl (one
    JSON object with a 'text' key, or a JSON string, per line). Found by itself beside an
    array file of the same name (embeddings.npy and embeddings.txt or embeddings.jsonl)."""
    columns: str | None = None
    """The feature columns of a CSV or Parquet file, comma-separated: names, 0-based numbers,
    FIRST:LAST ranges (both ends included) or patterns such as 'pixel*'. All columns but the
    label column when unset. The columns used are logged."""
    drop_columns: str | None = None
    """Columns of a CSV or Parquet file to leave out (an id or row-number column, text
    columns), in the same forms as --columns."""
    csv_delimiter: str | None = None
    """The character between the values of a CSV file: ',', ';', '|', 'tab' or 'space' (or
    any other one character). Found by itself when unset: the one of these that splits the
    first rows into the same number of fields."""
    image_size: int | None = None
    """Resize images to this many pixels square (needed when a folder's images differ in size)."""
    image_mode: Literal["auto", "gray", "rgb"] = "auto"
    """Colour of images and patches: 'auto' is gray when every image is, else RGB."""
    patch_size: int = 8
    """Side of the square natural-image patches (source 'patches')."""
    n_patches: int = 50_000
    """Patches to cut, train and test together (source 'patches')."""
    load: Literal["auto", "memory", "stream"] = "auto"
    """'memory' reads the data into RAM; 'stream' reads shuffled batches from disk through a
    buffer (.npy, .safetensors and shard caches), for data larger than memory; 'auto'
    streams those files when they are larger than --memory-limit-gb."""
    memory_limit_gb: float = 4.0
    """Files larger than this are streamed under --load auto."""
    shuffle_buffer: int = 262_144
    """Rows in the shuffle buffer of streamed data: batches are drawn at random from this
    many rows, read in chunks from across the file."""
    lm: ActivationConfig | None = None
    """For source 'lm': which language model's activations, on which text (the --lm-* flags).
    The first test_fraction x tokens rows of the text (at most 16,384) are held out for testing."""

    def __post_init__(self) -> None:
        check(
            0 < self.test_fraction < 1,
            "test_fraction",
            expected="a fraction between 0 and 1 (exclusive)",
            got=self.test_fraction,
            fix="Use e.g. 0.1.",
        )
        for name in ("train_limit", "test_limit", "image_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, expected="a positive integer, or unset", got=value, fix="Leave it unset.")
        for name in ("patch_size", "n_patches", "shuffle_buffer"):
            value = getattr(self, name)
            check(value >= 1, name, expected="a positive integer", got=value, fix=f"Pass a positive {name}.")
        for name in ("text_column", "texts"):
            value = getattr(self, name)
            check(value is None or value.strip() != "", name, expected="a non-empty name, or unset", got=repr(value),
                  fix="Leave it unset.")  # fmt: skip
        check(
            self.text_column is None or self.texts is None,
            "texts",
            expected="the texts from one place: a text column or a file of texts",
            got=f"text_column {self.text_column!r} and texts {self.texts!r}",
            fix="Pass --text-column or --texts, not both.",
        )
        for name in ("columns", "drop_columns"):
            value = getattr(self, name)
            check(
                value is None or value.strip(" ,") != "",
                name,
                expected="column names or numbers, comma-separated",
                got=repr(value),
                fix="Name at least one column, or leave it unset.",
            )
        delimiter = self.csv_delimiter and delimiter_char(self.csv_delimiter)
        check(
            delimiter is None or len(delimiter) == 1 and not delimiter.isalnum() and delimiter not in "\r\n\"'.-+",
            "csv_delimiter",
            expected="one character that is not part of a number or a quote, or one of " + ", ".join(DELIMITER_NAMES),
            got=repr(self.csv_delimiter),
            fix="For example --csv-delimiter ';' or --csv-delimiter tab.",
        )
        check(self.memory_limit_gb > 0, "memory_limit_gb", expected="a number > 0", got=self.memory_limit_gb, fix="Use e.g. 4.")
