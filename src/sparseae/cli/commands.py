"""The ``sparseae`` commands: each takes the parsed arguments, calls the public API and prints its result."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import io
import itertools
import logging
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np

from sparseae import runtime
from sparseae._config import from_dict
from sparseae.cli.flags import arg_type, hyperparameters
from sparseae.data import ActivationConfig, DataConfig, Dataset, load_data
from sparseae.data.inputs import TABLE_SUFFIXES, absolute_source, read_inputs, table_options
from sparseae.data.lm_models import is_many
from sparseae.data.loading import load_data_per_module
from sparseae.data.shards import ShardReader, is_shard_dir
from sparseae.devices import pick_device
from sparseae.errors import SparseAEError, check, positive_int
from sparseae.io import CODE_SUFFIXES, atomic_write, load, read_json, save_codes
from sparseae.models import build_preset, get_preset
from sparseae.report import write_comparison, write_report
from sparseae.rundir import CONFIG_FILE, load_run_data, read_config
from sparseae.sparsity import build_sparsity
from sparseae.training import TrainConfig, probe, resume
from sparseae.training import evaluate as evaluate_model
from sparseae.training import sweep as sweep_models
from sparseae.training import train as train_model
from sparseae.training.loop import SHARED

log = logging.getLogger("sparseae")


# --- train and sweep ---------------------------------------------------------------------------


def train(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.resume is not None:
        result = resume(args.resume, progress=progress, **args.extend)
    elif args.data.source == "lm" and args.lm.module is not None and is_many(args.lm.module):
        return _train_per_module(args)
    else:
        config, data, name = _setup(args)
        sparsity = build_sparsity(name, **vars(args.hp))
        model = build_preset(
            args.model,
            data.sample_shape,
            sparsity,
            seed=config.seed,
            preprocess=args.preprocess,
            recipe=args.recipe,
            **_model_fields(args),
        )
        out = args.out or _default_run_dir(args.model, name.rpartition(":")[2].lower())
        log.info("training %s with %s(%s) on %s -> %s", args.model, name, sparsity.extra_repr(), data.name, out)
        result = train_model(model, data, config, out, progress=progress)
    final = result.metrics[-1] if result.metrics else {}
    print(f"run: {result.run_dir}")
    if final:
        test = {k[5:]: v for k, v in final.items() if k.startswith("test_")}
        print(format_metrics(test, f"test metrics after epoch {final['epoch']}"))
    return 0


def _train_per_module(args: argparse.Namespace) -> int:
    """``--data lm`` with several modules: one SAE per module, all fed from each forward pass (a sweep)."""
    config, name = _train_config(args), _sparsity_name(args)
    datas = load_data_per_module(_data_config(args))
    models = {
        module: build_preset(args.model, data.sample_shape, build_sparsity(name, **vars(args.hp)), seed=config.seed,
                             preprocess=args.preprocess, **_model_fields(args))
        for module, data in datas.items()
    }  # fmt: skip
    out = args.out or _default_run_dir(args.model, name.rpartition(":")[2].lower())
    log.info("training %s with %s on %d modules (%s) -> %s", args.model, name, len(models), ", ".join(models), out)
    start = time.perf_counter()
    results = sweep_models(models, datas, config, out, progress=not args.quiet)
    return _report_family(results, out, f"modules: {len(results)} models in {time.perf_counter() - start:.1f}s")


def sweep(args: argparse.Namespace) -> int:
    config, data, name = _setup(args)
    hp, model_fields = vars(args.hp), _model_fields(args)
    grid = _swept(args, name)
    models, configs = {}, {}
    for combo in itertools.product(*([(key, v) for v in values] for key, values in grid)):
        setting = dict(combo)
        label = ",".join(f"{key}={value}" for key, value in combo)
        params = {**hp, **{k: v for k, v in setting.items() if k in hp}}
        fields = {**model_fields, **{k: v for k, v in setting.items() if k in vars(args.model_fields)}}
        own = dataclasses.replace(config, **{k: v for k, v in setting.items() if k in vars(args.train)})
        sparsity = build_sparsity(name, **params)
        models[label] = build_preset(args.model, data.sample_shape, sparsity, seed=own.seed, preprocess=args.preprocess, **fields)
        configs[label] = own
    out = args.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(key for key, _ in grid)}"
    start = time.perf_counter()
    results = sweep_models(models, data, config, out, configs=configs, progress=not args.quiet)
    return _report_family(results, out, f"sweep: {len(results)} models in {time.perf_counter() - start:.1f}s")


def _report_family(results: dict[str, Any], out: Path, title: str) -> int:
    """compare.html across the runs of a sweep (or of the modules of one model), and a line per run."""
    page = write_comparison([r.run_dir for r in results.values()], Path(out) / "compare.html")
    print(f"{title} -> {out}")
    width = max(16, *map(len, results))
    for label, result in results.items():
        last = result.metrics[-1]
        print(f"  {label:<{width}} L0 {last['test_l0']:8.2f}  FVU {last['test_fvu']:.4f}  dead {last['test_dead_units']}")
    print(f"comparison: {page}")
    return 0


def _swept(args: argparse.Namespace, name: str) -> list[tuple[str, list[Any]]]:
    """Each ``--param`` as a field name with its ``--values`` parsed by its type, in the order given."""
    check(len(args.param) == len(args.values), "--values", expected="one --values after each --param",
          got=f"{len(args.param)} --param and {len(args.values)} --values", fix="E.g. --param k --values 16,32 "
          "--param lr --values 1e-4,3e-4.")  # fmt: skip
    grid = []
    for param, text in zip(args.param, args.values, strict=True):
        key = _setting(args, param, name)
        check(key not in dict(grid), "--param", expected="each setting once", got=f"{key} twice",
              fix=f"Give all the values of {key} in one --values.")  # fmt: skip
        parse = _param_type(args, key, name)
        values = []
        for value in (v.strip() for v in text.split(",")):
            if not value:
                continue
            try:
                values.append(parse(value))
            except argparse.ArgumentTypeError as e:
                expected = str(e).split(", got")[0].removeprefix("expected ")
                raise SparseAEError(f"--values of {key}", expected=expected, got=f"{value!r} (in {text!r})",
                                    fix=f"Give comma-separated values of {key}.") from None  # fmt: skip
        check(len(values) >= 1, f"--values of {key}", expected="one or more comma-separated values", got=repr(text),
              fix="E.g. 8,16,32.")  # fmt: skip
        grid.append((key, values))
    return grid


def _setting(args: argparse.Namespace, param: str, name: str) -> str:
    """``--param`` as the name of a hyperparameter, model field or per-model training setting."""
    hp, fields, train = vars(args.hp), vars(args.model_fields), vars(args.train)
    key = param.strip().lstrip("-").replace("-", "_")
    if key in SHARED or key == "data_seed":
        raise SparseAEError(
            "--param",
            expected="a setting that may differ between models that take the same batches",
            got=f"{param!r}, which every model of a sweep shares",
            fix=f"Run one sweep per {key}.",
        )
    if key in hp or key in fields or key in train:
        return key
    close = difflib.get_close_matches(key, [*hp, *fields, *train], n=3, cutoff=0.6)
    raise SparseAEError(
        "--param",
        expected=f"a hyperparameter of {name} ({', '.join(hp) or 'none'}), a model field ({', '.join(fields)}) "
        "or a training setting (lr, seed, ... as in --help)",
        got=repr(param),
        fix=f"Did you mean {' or '.join(close)}?" if close else "Pick one of those.",
    )


def _param_type(args: argparse.Namespace, key: str, name: str) -> Any:
    """A parser for values of the swept setting, from its type annotation."""
    if key in vars(args.hp):
        hint = hyperparameters(name)[key][0]
    elif key in vars(args.model_fields):
        hints = typing.get_type_hints(get_preset(args.model, args.recipe).model.config_class)
        hint = hints.get(key, float)  # expansion_factor: an option of the preset, not a config field
    else:
        hint = typing.get_type_hints(TrainConfig)[key]
    return arg_type(hint, "--values")


def _setup(args: argparse.Namespace) -> tuple[TrainConfig, Dataset, str]:
    return _train_config(args), load_data(_data_config(args)), _sparsity_name(args)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.for_preset(args.model, args.recipe, **vars(args.train))  # no --lr: the preset's rate


def _sparsity_name(args: argparse.Namespace) -> str:
    return args.sparsity or get_preset(args.model, args.recipe).sparsity


def _data_config(args: argparse.Namespace) -> DataConfig:
    lm = lm_config(args.lm) if args.data.source == "lm" else None
    data_config = DataConfig(**vars(args.data), lm=lm)
    return dataclasses.replace(
        data_config,
        source=absolute_source(data_config.source),
        test_source=data_config.test_source and absolute_source(data_config.test_source),
    )


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags for build_preset; those left unset (n_latents beside --expansion-factor) take the preset's default."""
    return {k: v for k, v in vars(args.model_fields).items() if v is not None}


def _default_run_dir(model: str, sparsity: str) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{sparsity}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def lm_config(lm: argparse.Namespace) -> ActivationConfig:
    """The ``--lm-*`` flags as an ActivationConfig, its paths made absolute."""
    values = dict(vars(lm))
    missing = [f"--lm-{name}" for name in ("model", "module", "text") if values[name] is None]
    if missing:
        raise SparseAEError(
            "language-model activations",
            expected="--lm-model, --lm-module and --lm-text",
            got=f"no {', '.join(missing)}",
            fix="For example --lm-model gpt2 --lm-module transformer.h.6 --lm-text corpus.txt.",
        )
    if not values["text"].startswith("hf:"):
        values["text"] = str(Path(values["text"]).resolve())
    if Path(values["model"]).exists():
        values["model"] = str(Path(values["model"]).resolve())
    return ActivationConfig(**values)


def cache_activations(args: argparse.Namespace) -> int:
    from sparseae.data.activations import cache_activations as cache_lm_activations

    out = Path(cache_lm_activations(lm_config(args.lm), args.out, rows_per_shard=args.rows_per_shard, progress=not args.quiet))
    # One module: a cache at out; several (a list or glob): one cache per module under out/<module>/.
    for cache in [out] if is_shard_dir(out) else sorted(p for p in out.iterdir() if is_shard_dir(p)):
        meta = ShardReader(cache).metadata
        print(f"cached {meta.get('rows')} rows of width {meta.get('d_model')} in {cache} ({meta.get('tokens_per_s')} tokens/s)")
    return 0


# --- commands that read a run --------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    _check_batch_size(args)
    device = pick_device(args.device)
    model = load(args.run_dir, device)
    data = _run_data(args.run_dir, args.data)
    metrics = evaluate_model(model, data.test, args.batch_size, device)
    if args.probe:
        metrics["linear_probe"] = probe(model, data, args.batch_size)
    if args.ce_loss:
        metrics.update(_ce_loss(model, args.run_dir, args.ce_batches))
    print(format_metrics(metrics, f"{args.run_dir} on {data.name} test ({len(data.test)} samples)"))
    return 0


def _run_data(run_dir: Path, override: str | None) -> Dataset:
    run = read_config(run_dir)
    if override is not None:
        saved = from_dict(DataConfig, run["data"], f"{run_dir} data") if run["data"] else DataConfig()
        # the run's texts file (--texts) belongs to its own data, not to this one
        return load_data(dataclasses.replace(saved, source=absolute_source(override), test_source=None, texts=None))
    return load_run_data(run_dir, run, fix="Pass --data.")


def _check_batch_size(args: argparse.Namespace) -> None:
    check(args.batch_size >= 1, "--batch-size", expected="an integer >= 1", got=args.batch_size, fix="Use e.g. 1000.")


def _ce_loss(model: Any, run_dir: Path, batches: int) -> dict[str, float]:
    """CE loss recovered for a run trained on language-model activations, live or cached."""
    from sparseae.lm_eval import ce_loss_recovered_with, run_language_model

    run = read_config(run_dir)
    lm = run_language_model(run, str(run_dir))
    if lm is None:
        raise SparseAEError(
            "--ce-loss",
            expected="a run trained on language-model activations (--data lm, or a cache-activations directory)",
            got=f"a run trained on {run['data']['source'] if run['data'] else 'in-memory data'}",
            fix="Use --ce-loss only for language-model SAEs.",
        )
    return ce_loss_recovered_with(model, lm, max_batches=batches)


def export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from sparseae.interop.onnx import export_onnx

        path = export_onnx(load(args.run_dir), args.out, part=args.part)
    elif args.format == "saelens":
        from sparseae.interop import export_saelens

        path = export_saelens(load(args.run_dir), args.out, hook_name=args.hook_name, model_name=args.model_name)
    elif args.format == "sparsify":
        from sparseae.interop import export_sparsify

        path = export_sparsify(load(args.run_dir), args.out, hookpoint=args.hook_name)
    else:
        from sparseae.interop.hub import publish_folder

        path = publish_folder(args.run_dir, args.out, repo_id=args.repo_id)
    print(f"{args.format}: {path}")
    return 0


def report(args: argparse.Namespace) -> int:
    read_config(args.run_dir)
    if args.max_latents is not None:
        positive_int(args.max_latents, "--max-latents", fix="Pass a positive number.")
    positive_int(args.top, "--top", fix="Pass a positive number.")
    path = write_report(args.run_dir, out=args.out, max_latents=args.max_latents, progress=not args.quiet, top=args.top)
    print(f"report: {path} (open it from disk; keep {path.stem}_files/ beside it)")
    return 0


def compare(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        read_config(run_dir)
    path = write_comparison(args.run_dirs, args.out)
    print(f"comparison: {path}")
    return 0


def encode(args: argparse.Namespace) -> int:
    _check_batch_size(args)
    if args.output.exists() and not args.overwrite:
        raise SparseAEError(
            str(args.output),
            expected="a path that does not exist yet",
            got="an existing file",
            fix="Choose another --output or pass --overwrite.",
        )
    sparse = args.format == "sparse"
    if sparse:
        check(
            args.output.suffix in CODE_SUFFIXES,
            "--output",
            expected="a path ending in .safetensors or .npz (--format sparse)",
            got=args.output,
            fix="Name the file CODES.safetensors or CODES.npz, or pass --format dense for CODES.npy.",
        )
    else:
        check(
            args.output.suffix == ".npy",
            "--output",
            expected="a path ending in .npy (--format dense)",
            got=args.output,
            fix="Name the file CODES.npy, or pass --format sparse for CODES.safetensors or CODES.npz.",
        )
    device = pick_device(args.device)
    model = load(args.run_dir, device)
    if args.input is None:
        x = _run_data(args.run_dir, None).test
    else:
        x = read_inputs(args.input, model.input_shape, _table_options(args.run_dir, args.input))
    model.check_input(tuple(x.shape[1:]), str(args.input or "the run's test data"))
    if sparse:
        runtime.quiet_sparse_warnings()  # torch's CSR "beta" notice says nothing a user of this command can act on
    codes = model.encode_all(x, args.batch_size, sparse=sparse)  # (N, n_latents)
    if sparse:
        save_codes(args.output, codes)
        nnz = codes.values().numel()
        print(f"codes: {args.output} {tuple(codes.shape)}, {nnz:,} non-zeros (L0 {nnz / max(1, len(codes)):.2f})")
        return 0
    out = codes.numpy()
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write(args.output, buffer.getvalue())
    print(f"codes: {args.output} {out.shape} (L0 {float((out != 0).sum(1).mean()):.2f})")
    return 0


def _table_options(run_dir: Path, path: Path) -> dict[str, Any]:
    """For a CSV/Parquet file to encode: the columns the run was trained on; nothing for other files or a bare model."""
    config = Path(run_dir) / CONFIG_FILE
    if path.suffix.lower() not in TABLE_SUFFIXES or not config.is_file():
        return {}
    run = read_json(config)
    return table_options(run.get("data") if isinstance(run, dict) else None, path)


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    lines = [title]
    for key, value in metrics.items():
        lines.append(f"  {key:<16} {value:.6g}" if isinstance(value, float) else f"  {key:<16} {value}")
    return "\n".join(lines)
