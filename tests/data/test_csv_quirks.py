"""Files that numpy and pandas read and that sparseae once refused or misread (issue 17).

Fortran-ordered ``.npy``; CSV files separated by ``;``, tabs or ``|``; UTF-16 CSV files with a
byte-order mark (as Excel writes them); rows ending in a delimiter; an ``id`` column that is not a
feature (``columns`` / ``drop_columns``). Each test checks the values loaded against the array
written, or the message of the refusal.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import sparseae
from sparseae import DataConfig, SparseAEError, load_data
from sparseae.cli import main
from sparseae.data import RowStream
from sparseae.data.arrays import NpyReader, read_arrays
from sparseae.data.split import holdout_rows

X = np.arange(1, 61, dtype=np.float64).reshape(12, 5) / 4  # exact in float32 and in text
NAMES = [f"x{i}" for i in range(5)]


def _csv(rows: np.ndarray, delimiter: str = ",", header: list[str] | None = None, end: str = "") -> str:
    lines = [delimiter.join(header) + end] if header else []
    lines += [delimiter.join(repr(float(v)) for v in row) + end for row in rows]
    return "\n".join(lines) + "\n"


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _rows(path, **config) -> np.ndarray:
    """Every sample of the file as loaded (train and test put back in file order), float64."""
    data = load_data(DataConfig(str(path), **config))
    train, test = (x[:] if isinstance(x, RowStream) else x for x in (data.train, data.test))
    train_rows, test_rows = holdout_rows(len(train) + len(test), 0.1)
    out = torch.empty(len(train) + len(test), *train.shape[1:])
    out[train_rows], out[test_rows] = train, test
    return out.double().numpy()


# --- 1. Fortran-ordered .npy ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 6), (40, 3, 4), (7, 2, 3, 2)])
@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<i2", "|u1"])
def test_fortran_ordered_npy_reads_every_row_range_as_the_array(tmp_path, shape, dtype):
    array = (np.random.default_rng(0).random(shape) * 100).astype(dtype)
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    reader = NpyReader(tmp_path / "f.npy")
    assert reader.fortran and reader.shape == shape
    n = shape[0]
    for start, stop in [(0, n), (0, 1), (n - 1, n), (2, 5), (1, n - 1), (n // 2, n)]:  # one read, and one per column
        assert np.array_equal(reader.read(start, stop), array[start:stop]), (start, stop)


@pytest.mark.parametrize("load", ["memory", "stream"])
def test_fortran_ordered_npy_loads_in_memory_and_streamed(tmp_path, load):
    array = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    assert np.array_equal(_rows(tmp_path / "f.npy", load=load), array)
    data = load_data(DataConfig(str(tmp_path / "f.npy"), load=load))
    if load == "stream":
        batches = torch.cat(list(data.train.batches(64, seed=0, epoch=0)))
        assert torch.equal(batches.sort(0).values, data.train[:].sort(0).values)


def test_fortran_ordered_npy_with_one_value_per_row_reads_as_it_is(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(X[:, :1]))
    assert not NpyReader(tmp_path / "f.npy").fortran
    assert np.array_equal(_rows(tmp_path / "f.npy"), X[:, :1])


# --- 2. delimiters ----------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("header", [True, False])
def test_csv_delimiter_is_found_by_itself(tmp_path, delimiter, header):
    path = _write(tmp_path, "rows.csv", _csv(X, delimiter, NAMES if header else None))
    assert np.array_equal(_rows(path), X)


def test_space_separated_numbers_as_numpy_savetxt_writes_them(tmp_path):
    path = tmp_path / "rows.csv"
    np.savetxt(path, X)
    assert np.array_equal(_rows(path), X)


def test_semicolon_csv_with_labels_and_quoted_header(tmp_path):
    text = '"a";"b";"label"\n1;2;0\n3;4;1\n5;6;0\n7;8;1\n'
    data = load_data(DataConfig(str(_write(tmp_path, "rows.csv", text)), label_column="label", test_fraction=0.25))
    assert data.sample_shape == (2,)
    assert sorted(torch.cat([data.train_labels, data.test_labels]).tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("given", [":", "tab", "\\t", "\t", "space"])
def test_csv_delimiter_can_be_named(tmp_path, given):
    delimiter = {"tab": "\t", "\\t": "\t", "space": " "}.get(given, given)
    path = _write(tmp_path, "rows.csv", _csv(X, delimiter, NAMES))
    assert np.array_equal(_rows(path, csv_delimiter=given), X)


def test_a_delimiter_that_cannot_be_found_is_named_in_the_error(tmp_path):
    path = _write(tmp_path, "rows.csv", "1:2:3\n4:5:6\n7:8:9\n")
    with pytest.raises(
        SparseAEError,
        match=r"rows\.csv, line 2: expected numbers separated by a delimiter \(none of , ; tab \| or space .*\), "
        r"got one column, and '4:5:6' is not a number\. Pass --csv-delimiter",
    ):
        load_data(DataConfig(str(path)))


def test_decimal_commas_are_named_in_the_error(tmp_path):
    path = _write(tmp_path, "rows.csv", "a;b\n1,5;2,5\n3,5;4,5\n")
    with pytest.raises(SparseAEError, match=r"column 'a': expected a number, got '1,5'\. Write numbers with a decimal point"):
        load_data(DataConfig(str(path)))


def test_ragged_rows_are_still_reported_as_ragged(tmp_path):
    for delimiter in ",;":
        path = _write(tmp_path, "rows.csv", f"1{delimiter}2{delimiter}3\n4{delimiter}5\n")
        with pytest.raises(SparseAEError, match=r"rows\.csv, line 2: expected 3 values, as on the first line, got 2"):
            load_data(DataConfig(str(path)))


@pytest.mark.parametrize("bad", ["ab", "", "1", ".", '"', "\n", "-"])
def test_csv_delimiter_that_cannot_be_one_is_refused(bad):
    with pytest.raises(SparseAEError, match=r"csv_delimiter: expected one character that is not part of a number"):
        DataConfig("rows.csv", csv_delimiter=bad)


# --- 3. encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_csv_with_a_byte_order_mark_is_read_in_its_encoding(tmp_path, encoding):
    text = _csv(X, ",", NAMES)
    data = ("\ufeff" + text).encode(encoding) if encoding in ("utf-16-le", "utf-16-be") else text.encode(encoding)
    assert np.array_equal(_rows(_write(tmp_path, "rows.csv", data)), X)


def test_excel_unicode_text_is_utf16_and_tab_separated(tmp_path):
    path = _write(tmp_path, "rows.csv", _csv(X, "\t", NAMES).replace("\n", "\r\n").encode("utf-16"))
    assert np.array_equal(_rows(path), X)


def test_csv_that_is_not_utf8_says_where_and_how_to_convert(tmp_path):
    path = _write(tmp_path, "rows.csv", "größe,b\n1,2\n3,4\n".encode("latin-1"))
    with pytest.raises(
        SparseAEError,
        match=r"rows\.csv: expected a UTF-8 text file \(or UTF-16 with a byte-order mark, as Excel writes it\), "
        r"got bytes that are not UTF-8 \(at byte 2: b'\\xf6\\xdfe,'\)\. Save it as UTF-8",
    ):
        load_data(DataConfig(str(path)))


def test_a_bad_byte_past_the_first_megabyte_is_found_where_it_is(tmp_path):
    head = "a,b\n" + "1.0,2.0\n" * 131_072  # 1 MiB and 4 bytes: 'é' below straddles the 1 MiB reads
    data = (head[: (1 << 20) - 1] + "é" + head[(1 << 20) - 1 :] + "3.0,4.0\n").encode() + b"5.0,\xff.0\n"
    path = _write(tmp_path, "rows.csv", data)
    with pytest.raises(SparseAEError, match=rf"got bytes that are not UTF-8 \(at byte {len(data) - 4}: b'\\xff\.0\\n'\)"):
        load_data(DataConfig(str(path)))


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    path = _write(tmp_path, "rows.csv", "1,2\n3,4\n".encode("utf-16-le"))
    with pytest.raises(SparseAEError, match=r"got a NUL character \(at byte 1\): UTF-16 without a byte-order mark"):
        load_data(DataConfig(str(path)))


def test_damaged_utf16_names_the_byte(tmp_path):
    path = _write(tmp_path, "rows.csv", b"\xff\xfe" + "1,2\n".encode("utf-16-le") + b"\x00\xdc")  # a lone low surrogate
    with pytest.raises(SparseAEError, match=r"got bytes that are not UTF-16 \(at byte 10: "):
        load_data(DataConfig(str(path)))


# --- 4. rows ending in a delimiter ------------------------------------------------------------


@pytest.mark.parametrize("header_end", ["", ","])
def test_rows_ending_in_a_comma_lose_the_empty_column(tmp_path, caplog, header_end):
    caplog.set_level(logging.INFO, logger="sparseae")
    text = ",".join(NAMES) + header_end + "\n" + "".join(",".join(map(repr, row.tolist())) + ",\n" for row in X)
    assert np.array_equal(_rows(_write(tmp_path, "rows.csv", text)), X)
    assert "an empty last column (rows ending in ','): left it out" in caplog.text


def test_rows_ending_in_a_semicolon_without_header(tmp_path):
    assert np.array_equal(_rows(_write(tmp_path, "rows.csv", _csv(X, ";", end=";"))), X)


def test_a_named_column_empty_in_every_row_is_left_out_and_named(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparseae")
    text = ",".join([*NAMES, "notes"]) + "\n" + _csv(X, end=",")
    assert np.array_equal(_rows(_write(tmp_path, "rows.csv", text)), X)
    assert "column(s) 'notes' empty in every row: left out" in caplog.text


def test_an_empty_value_inside_a_row_is_still_an_error(tmp_path):
    with pytest.raises(SparseAEError, match=r"line 2, column 1: expected a number, got ''"):
        load_data(DataConfig(str(_write(tmp_path, "rows.csv", "1,2,3\n4,,6\n"))))


# --- 5. choosing columns ----------------------------------------------------------------------

WITH_ID = "id,x0,x1,x2,x3,x4,y\n" + "".join(f"{i},{','.join(map(repr, row.tolist()))},{i % 2}\n" for i, row in enumerate(X))


def test_an_id_column_is_trained_on_with_a_warning_that_names_the_fix(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparseae")
    path = _write(tmp_path, "data.csv", WITH_ID)
    assert np.array_equal(_rows(path, label_column="y"), np.column_stack([np.arange(12), X]))
    assert "data.csv: training on 6 columns: id, x0, x1, x2, x3, x4; label column: y" in caplog.text
    assert "column 'id' looks like a row number (it counts the rows)" in caplog.text
    assert "Pass --drop-columns id to leave it out" in caplog.text


@pytest.mark.parametrize(
    "config",
    [
        {"drop_columns": "id"},
        {"drop_columns": "0"},
        {"columns": "x0:x4"},
        {"columns": "x*"},
        {"columns": "1:5"},
        {"columns": "x0, x1,x2:x3 ,x4"},
        {"columns": "x*,y"},  # the label column is never a feature
    ],
)
def test_columns_and_drop_columns_choose_the_features(tmp_path, caplog, config):
    caplog.set_level(logging.INFO, logger="sparseae")
    path = _write(tmp_path, "data.csv", WITH_ID)
    assert np.array_equal(_rows(path, label_column="y", **config), X)
    assert "data.csv: training on 5 columns: x0, x1, x2, x3, x4; label column: y" in caplog.text
    assert "looks like a row number" not in caplog.text


def test_drop_columns_leaves_out_a_text_column(tmp_path):
    text = "name,a,b\n" + "".join(f"row {i},{i * 2},{i * 3 + 1}\n" for i in range(10))
    rows = _rows(_write(tmp_path, "data.csv", text), drop_columns="name")
    assert np.array_equal(rows, np.array([[i * 2, i * 3 + 1] for i in range(10)]))


def test_a_row_number_column_without_a_header_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparseae")
    path = _write(tmp_path, "data.csv", _csv(np.column_stack([np.arange(1, 13), X])))
    assert np.array_equal(_rows(path, drop_columns="0"), X)
    caplog.clear()
    load_data(DataConfig(str(path)))
    assert "column 0 looks like a row number (it counts the rows)" in caplog.text and "--drop-columns 0" in caplog.text


def test_many_columns_are_logged_in_short(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparseae")
    wide = np.random.default_rng(0).random((10, 784))
    load_data(DataConfig(str(_write(tmp_path, "data.csv", _csv(wide, header=[f"x{i}" for i in range(784)])))))
    assert "data.csv: training on 784 columns: x0, x1, x2, x3, ... (779 more), x783" in caplog.text


@pytest.mark.parametrize(
    "config, message",
    [
        ({"columns": "x0,x00"}, r"data\.csv --columns: expected columns of the file \(id, x0, x1, x2, x3, x4, y\), "
         r"or their numbers 0 to 6, got 'x00'\. Did you mean 'x0'\? Name columns the file has"),
        ({"drop_columns": "ID"}, r"data\.csv --drop-columns: expected columns of the file .*, got 'ID'\. Did you mean 'id'\?"),
        ({"columns": "z*"}, r"--columns: expected columns of the file .*, got 'z\*'"),
        ({"columns": "7"}, r"--columns: expected .* numbers 0 to 6, got '7'"),
        ({"columns": "x4:x1"}, r"--columns: expected a range FIRST:LAST with FIRST before LAST in the file, got 'x4:x1'\. "
         r"Write it the other way round: x1:x4"),
        ({"columns": "y"}, r"data\.csv columns: expected at least one feature column, got none left besides the label column "
         r"'y'"),
        ({"drop_columns": "id,x*"}, r"expected at least one feature column, got none left besides the label column 'y' "
         r"after --drop-columns 'id,x\*'"),
    ],
)  # fmt: skip
def test_bad_column_choices_list_the_columns(tmp_path, config, message):
    with pytest.raises(SparseAEError, match=message):
        load_data(DataConfig(str(_write(tmp_path, "data.csv", WITH_ID)), label_column="y", **config))


def test_columns_of_a_file_without_header_are_numbers(tmp_path):
    path = _write(tmp_path, "data.csv", _csv(X))
    assert np.array_equal(_rows(path, columns="1:3"), X[:, 1:4])
    with pytest.raises(SparseAEError, match=r"--columns: expected column numbers 0 to 4 \(the file has no header\), got 'a'"):
        load_data(DataConfig(str(path), columns="a"))


@pytest.mark.parametrize("flag", ["columns", "drop_columns", "csv_delimiter"])
def test_column_flags_are_refused_for_files_without_columns(tmp_path, flag):
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(SparseAEError, match=rf"x\.npy --{flag.replace('_', '-')}: expected a CSV.* file, which"):
        read_arrays(tmp_path / "x.npy", **{flag: ";"})


def test_parquet_columns_drop_columns_and_the_pandas_index(tmp_path, caplog):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    caplog.set_level(logging.INFO, logger="sparseae")
    frame = pd.DataFrame(X, columns=NAMES, index=pd.Index(np.arange(100, 112), name=None))
    frame.insert(0, "id", np.arange(12))
    frame.to_parquet(tmp_path / "data.parquet")  # the index is saved as __index_level_0__
    assert np.array_equal(_rows(tmp_path / "data.parquet", drop_columns="id"), X)
    assert "training on 5 columns: x0, x1, x2, x3, x4; left out: id, __index_level_0__" in caplog.text
    assert np.array_equal(_rows(tmp_path / "data.parquet", columns="x1:x3"), X[:, 1:4])
    caplog.clear()
    assert np.array_equal(_rows(tmp_path / "data.parquet"), np.column_stack([np.arange(12), X]))
    assert "column 'id' looks like a row number" in caplog.text
    with pytest.raises(SparseAEError, match=r"data\.parquet --columns: expected columns of the file \(id, x0, .*got 'w'"):
        load_data(DataConfig(str(tmp_path / "data.parquet"), columns="w"))


def test_parquet_text_column_is_named_and_can_be_dropped(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": [f"r{i}" for i in range(12)], "a": X[:, 0], "b": X[:, 1]}), tmp_path / "t.parquet")
    with pytest.raises(SparseAEError, match=r"non-numeric column\(s\) name \(string\)\. .* --drop-columns name leaves them out"):
        load_data(DataConfig(str(tmp_path / "t.parquet")))
    assert np.array_equal(_rows(tmp_path / "t.parquet", drop_columns="name"), X[:, :2])


def test_parquet_list_column_is_one_column_of_many_values(tmp_path, caplog):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    caplog.set_level(logging.INFO, logger="sparseae")
    table = pa.table({"id": np.arange(12), "emb": list(X), "label": np.arange(12) % 3})
    pq.write_table(table, tmp_path / "emb.parquet")
    assert np.array_equal(_rows(tmp_path / "emb.parquet", label_column="label", drop_columns="id"), X)
    assert "emb.parquet: training on 1 column: emb (5 values per row); label column: label; left out: id" in caplog.text


# --- the command line -------------------------------------------------------------------------


def test_cli_flags_reach_the_loader(tmp_path, capsys):
    path = _write(tmp_path, "data.csv", WITH_ID.replace(",", ";"))
    out = tmp_path / "run"
    argv = ["train", "--data", str(path), "--label-column", "y", "--drop-columns", "id", "--csv-delimiter", ";",
            "--model", "dense", "--n-latents", "8", "--k", "2", "--aux-k", "0", "--epochs", "1", "--batch-size", "4",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "config.json").exists()
    assert main(["train", *argv[1:-3], "--columns", "x0,q", "--out", str(tmp_path / "bad")]) == 2
    assert "data.csv --columns: expected columns of the file" in capsys.readouterr().err


def test_encode_reads_the_columns_the_run_was_trained_on(tmp_path, capsys):
    """`encode --input` of a file laid out like the training data uses the run's column choice and delimiter."""
    path = _write(tmp_path, "data.csv", WITH_ID.replace(",", ";"))
    out = tmp_path / "run"
    argv = ["train", "--data", str(path), "--label-column", "y", "--drop-columns", "id", "--csv-delimiter", ";",
            "--model", "dense", "--n-latents", "8", "--k", "2", "--aux-k", "0", "--epochs", "1", "--batch-size", "4",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    codes = tmp_path / "codes.npy"
    assert main(["encode", str(out), "--input", str(path), "--output", str(codes), "--quiet"]) == 0, capsys.readouterr().err
    features = read_arrays(path, label_column="y", drop_columns="id", csv_delimiter=";").x
    expected = sparseae.load(out).encode_all(features.float(), 64).numpy()
    np.testing.assert_allclose(np.load(codes), expected, rtol=1e-6, atol=1e-6)


def test_cli_help_shows_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--columns COLUMNS", "--drop-columns DROP_COLUMNS", "--csv-delimiter CSV_DELIMITER"):
        assert flag in text
