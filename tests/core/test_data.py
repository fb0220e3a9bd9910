from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from hrlm.data import check_label_counts, dataset_from_records, load_dataset, read_table, split_dataset
from hrlm.errors import DataError, LabelError
from tests.conftest import make_texts, write_csv


def test_reads_every_format_with_gzip(tmp_path: Path) -> None:
    rows = make_texts(5)
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    frame.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "a.parquet")
    with gzip.open(tmp_path / "a.csv.gz", "wt", encoding="utf-8") as fh:
        frame.to_csv(fh, index=False)
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.parquet", "a.csv.gz"):
        ds = load_dataset(tmp_path / name)
        assert ds.texts == frame["text"].tolist() and ds.labels == frame["label"].tolist(), name


def test_missing_file_folder_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path)
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        read_table(tmp_path / "x.docx")


def test_wrong_encoding_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,food\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["latin.csv", "latin.csv.gz", "latin.jsonl", "latin.txt"])
def test_a_byte_that_is_not_utf8_is_named_by_its_file_offset_and_line(name: str, tmp_path: Path) -> None:
    rows = {
        "csv": "text,label\nhello there,x\ncaf\xe9 au lait,food\n",
        "jsonl": '{"text": "hello there"}\n{"text": "caf\xe9"}\n',
        "txt": "hello there\ncaf\xe9 au lait\n",
    }[name.split(".")[1]]
    data = rows.encode("latin-1")
    offset = data.index(b"\xe9")
    line = data[:offset].count(b"\n") + 1
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataError, match=rf"not UTF-8 text \(byte 0xe9 at offset {offset}, line {line}: "):
        read_table(path)


def test_a_character_cut_by_the_read_buffer_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"a" * ((1 << 20) - 1) + "\u00e9t\u00e9\n".encode() + b"\xff")  # é spans the 1 MiB boundary
    with pytest.raises(DataError, match=rf"byte 0xff at offset {(1 << 20) - 1 + 6}, line 2: invalid start byte"):
        read_table(path)


def test_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [("a", "b")], header=("body", "category"))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert "'text'" in str(err.value) and "['body', 'category']" in str(err.value) and "--text-col" in str(err.value)
    ds = load_dataset(path, text_col="body", label_col="category")
    assert ds.texts == ["a"]


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "header.csv")


def test_empty_texts_dropped_with_count_or_strict_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [("hello", "a"), ("  ", "b"), ("", "a"), ("bye", "b"), ("x", "")])
    ds = load_dataset(path)
    assert ds.texts == ["hello", "bye"]
    assert any("2 row(s) with an empty text" in n for n in ds.notes)
    assert any("1 row(s) with an empty label" in n for n in ds.notes)
    with pytest.raises(DataError, match="--strict"):
        load_dataset(path, strict=True)


def test_multi_label_from_separator_list_column_and_json_cell(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [("pay and leave", "pay|leave"), ("pay", "pay")])
    ds = load_dataset(path, label_sep="|")
    assert ds.multi_label and ds.labels == [["leave", "pay"], ["pay"]]
    with (tmp_path / "m.jsonl").open("w") as fh:
        fh.write(json.dumps({"text": "a", "label": ["x", "y"]}) + "\n")
        fh.write(json.dumps({"text": "b", "label": []}) + "\n")
    ds = load_dataset(tmp_path / "m.jsonl")
    assert ds.multi_label and ds.labels == [["x", "y"], []]
    path = write_csv(tmp_path / "j.csv", [("a", '["x", "y"]'), ("b", '["y"]')])
    assert load_dataset(path).labels == [["x", "y"], ["y"]]


def test_integer_labels_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "int.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": 1}\n')
    ds = load_dataset(path)
    assert ds.labels == ["0", "1", "1"] and not ds.multi_label
    frame = pd.DataFrame({"text": ["a", "b"], "label": [["x"], ["x", "y"]]})
    frame.to_parquet(tmp_path / "list.parquet")
    assert load_dataset(tmp_path / "list.parquet").labels == [["x"], ["x", "y"]]


def test_rare_class_and_single_class_errors() -> None:
    ds = dataset_from_records(["a", "b", "c"], ["x", "x", "y"])
    with pytest.raises(LabelError, match="'y' \\(1\\)"):
        check_label_counts(ds)
    with pytest.raises(LabelError, match="only one class"):
        check_label_counts(dataset_from_records(["a", "b"], ["x", "x"]))


def test_stratified_split_is_seeded_and_complete() -> None:
    rows = make_texts(30)
    ds = dataset_from_records([r[0] + f" {i}" for i, r in enumerate(rows)], [r[1] for r in rows])
    a = split_dataset(ds, val_size=0.1, test_size=0.2, seed=7)
    b = split_dataset(ds, val_size=0.1, test_size=0.2, seed=7)
    assert a["test"].texts == b["test"].texts
    assert sum(len(p) for p in a.values()) == len(ds)
    assert set(a["train"].texts).isdisjoint(a["test"].texts)
    for part in a.values():  # every class on every side, in proportion
        assert set(part.label_names) == {"payroll", "leave", "it"}
    assert len(a["test"]) == 18 and len(a["validation"]) == 9


def test_group_split_keeps_groups_on_one_side() -> None:
    texts = [f"t{i}" for i in range(200)]
    labels = ["a" if i % 2 else "b" for i in range(200)]
    groups = [f"g{i // 10}" for i in range(200)]
    parts = split_dataset(dataset_from_records(texts, labels, groups=groups), seed=3)
    sides = {}
    for name, part in parts.items():
        assert part.groups is not None
        for g in part.groups:
            assert sides.setdefault(g, name) == name
    assert len(parts["test"]) > 0 and len(parts["validation"]) > 0


def test_split_column(tmp_path: Path) -> None:
    rows = [("a", "x", "train"), ("b", "y", "train"), ("c", "x", "TEST"), ("d", "y", "dev"), ("e", "x", "train")]
    path = write_csv(tmp_path / "s.csv", rows, header=("text", "label", "split"))
    parts = split_dataset(load_dataset(path, split_col="split"))
    assert parts["test"].texts == ["c"] and parts["validation"].texts == ["d"]
    bad = write_csv(tmp_path / "b.csv", [("a", "x", "holdin")], header=("text", "label", "split"))
    with pytest.raises(DataError, match="holdin"):
        load_dataset(bad, split_col="split")


def test_fingerprint_is_stable_and_order_independent() -> None:
    a = dataset_from_records(["x", "y"], ["1", "2"])
    b = dataset_from_records(["y", "x"], ["2", "1"])
    c = dataset_from_records(["x", "y"], ["2", "1"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint().startswith("sha256:")


def test_several_label_columns_make_a_multi_task_dataset(tmp_path: Path) -> None:
    path = tmp_path / "survey.csv"
    path.write_text(
        "text,topic,sentiment\n"
        "pay is late,pay|process,neg\n"
        "great manager,people,pos\n"
        "no topic here,,neg\n"
        "missing sentiment,people,\n",
        encoding="utf-8",
    )
    ds = load_dataset(path, label_col="topic,sentiment", label_sep="|")
    assert ds.task_names == ["topic", "sentiment"]
    assert ds.multi_label and ds.labels == [["pay", "process"], ["people"], []]
    sentiment = ds.for_task("sentiment")
    assert not sentiment.multi_label and sentiment.labels == ["neg", "pos", "neg"]
    assert any("empty label in column 'sentiment'" in n for n in ds.notes)
    sub = ds.subset([1, 0])
    assert sub.for_task("sentiment").labels == ["pos", "neg"] and sub.labels == [["people"], ["pay", "process"]]
    assert ds.fingerprint() != load_dataset(path, label_col="topic", label_sep="|").fingerprint()
    with pytest.raises(DataError, match="no task 'mood'"):
        ds.for_task("mood")
    with pytest.raises(DataError, match="twice"):
        load_dataset(path, label_col="topic,topic")
    with pytest.raises(LabelError, match="task 'topic'"):
        check_label_counts(ds)
