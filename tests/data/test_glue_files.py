"""GLUE from local copies, and the file reader's refusals: every row read with its label, or a line-named error.

The GLUE folders below are written byte for byte in the distribution's formats (download_glue_data.py):
CoLA without a header, MNLI's gold label last and its dev file dev_matched.tsv, MRPC's label first,
texts that start with quote characters (RTE, MNLI), which a CSV reader with quoting on would merge.
"""

import json

import pytest

from hskstore.data.tasks import GLUE_TASKS, absolute_task_ref, load_task, task_name_of
from hskstore.errors import DataError
from hskstore.runtime.schedules import default_schedules

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")


def _row(task: str, i: int, label: str) -> str:
    """One data line of `task` in the distribution's column order."""
    a, b = f"first text {i}", f"second text {i}"
    if task == "cola":
        return f"gj04\t{label}\t{'' if label == '1' else '*'}\t{a}"
    if task == "sst2":
        return f"{a}\t{label}"
    if task == "mrpc":
        return f"{label}\t{1000 + i}\t{2000 + i}\t{a}\t{b}"
    if task == "stsb":
        return f"{i}\tmain-captions\tMSRvid\t2012test\t{i}\tnone\tnone\t{a}\t{b}\t{label}"
    if task == "qqp":
        return f"{i}\t{2 * i}\t{2 * i + 1}\t{a}?\t{b}?\t{label}"
    if task == "mnli":
        return f"{i}\t{i}\t{i}e\tfiction\t( {a} )\t( {b} )\t(ROOT {a})\t(ROOT {b})\t{a}\t{b}\t{label}\t{label}"
    return f"{i}\t{a}\t{b}\t{label}"  # qnli, rte, wnli


HEADERS = {
    "sst2": "sentence\tlabel",
    "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "mnli": MNLI_TRAIN_HEADER,
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
    "wnli": "index\tsentence1\tsentence2\tlabel",
}
LABELS = {"cola": ["0", "1"], "sst2": ["0", "1"], "mrpc": ["0", "1"], "stsb": ["0.5", "3.8", "5.000"],
          "qqp": ["0", "1"], "mnli": ["entailment", "neutral", "contradiction"],
          "qnli": ["entailment", "not_entailment"], "rte": ["entailment", "not_entailment"], "wnli": ["0", "1"]}


def write_glue_folder(directory, task: str, train_rows: int = 12, dev_rows: int = 5):
    """A GLUE task folder as the distribution ships it: train.tsv and dev.tsv (MNLI: dev_matched.tsv)."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = LABELS[task]
    for name, count in (("train.tsv", train_rows), ("dev_matched.tsv" if task == "mnli" else "dev.tsv", dev_rows)):
        lines = [] if task == "cola" else [MNLI_DEV_HEADER if task == "mnli" and name != "train.tsv"
                                           else HEADERS[task]]
        for i in range(count):
            line = _row(task, i, labels[i % len(labels)])
            if task == "mnli" and name != "train.tsv":  # dev rows carry five annotator labels
                line = line.rsplit("\t", 2)[0] + "\t" + "\t".join([labels[i % len(labels)]] * 6)
            lines.append(line)
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_glue_task_reads_from_its_distribution_folder_with_its_name_labels_and_metric(tmp_path, task):
    folder = write_glue_folder(tmp_path / task, task)
    data = load_task(task, data_dir=str(folder))
    assert data.spec == GLUE_TASKS[task]  # name, columns, label names, metric and splits: the GLUE task's
    assert data.num_examples("train") == 12 and data.num_examples("validation") == 5
    train = data.split("train")
    assert train[data.spec.text_columns[0]][3].rstrip("?") == "first text 3"
    if data.spec.is_regression:
        assert train["label"][:3] == [0.5, 3.8, 5.0]
    else:
        assert train["label"] == [i % len(LABELS[task]) for i in range(12)]


def test_the_glue_root_folder_works_too_and_mnli_reads_dev_matched(tmp_path):
    write_glue_folder(tmp_path / "glue_data" / "MNLI", "mnli", dev_rows=4)
    (tmp_path / "glue_data" / "MNLI" / "dev_mismatched.tsv").write_text(MNLI_DEV_HEADER + "\n")
    data = load_task("mnli", data_dir=str(tmp_path / "glue_data"))
    assert data.num_examples("validation") == 4 and data.spec.validation_split == "validation_matched"


def test_rte_rows_that_start_with_a_quote_stay_separate_rows(tmp_path):
    folder = write_glue_folder(tmp_path / "RTE", "rte", train_rows=4)
    rows = (folder / "train.tsv").read_text().splitlines()
    rows[2] = '1\t"The Extra Girl" (1923) is a story of a small-town girl.\t"The Extra Girl" was made in 1923.\tentailment'
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    data = load_task("rte", data_dir=str(folder))
    assert data.num_examples("train") == 4 and data.spec.num_labels == 2
    assert data.split("train")["sentence1"][1].startswith('"The Extra Girl"')
    assert data.split("train")["label"] == [0, 0, 0, 1]  # row 2 now entailment


def test_cola_has_no_header_is_scored_with_matthews_and_keeps_its_schedule(tmp_path):
    folder = write_glue_folder(tmp_path / "CoLA", "cola", train_rows=10)
    data = load_task("cola", data_dir=str(folder))
    assert data.num_examples("train") == 10  # the first line is a row, not a header
    assert data.spec.name == "cola" and data.spec.metric == "matthews" and data.spec.num_labels == 2
    assert default_schedules(data.spec.name)["hsk"].epochs == 30  # the paper's CoLA row, not SST-2's


@pytest.mark.parametrize("line, message", [
    ("gj04\t2\t\tA sentence.", r"train.tsv line 3: unknown label '2'"),
    ("gj04\t\t\tA sentence.", r"train.tsv line 3: missing label"),
    ("gj04\t1\tA sentence.", r"train.tsv line 3 has 3 tab-separated fields, GLUE CoLA rows have 4"),
    ("gj04\t1\t\t   ", r"train.tsv line 3: empty text in column 'sentence'"),
])
def test_a_bad_glue_row_is_an_error_naming_file_and_line_never_a_new_class(tmp_path, line, message):
    folder = write_glue_folder(tmp_path / "CoLA", "cola", train_rows=4)
    rows = (folder / "train.tsv").read_text().splitlines()
    rows[2] = line
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_task("cola", data_dir=str(folder))
    assert "\n" not in str(info.value)


def test_a_folder_of_another_task_is_caught_by_its_header(tmp_path):
    folder = write_glue_folder(tmp_path / "RTE", "rte")
    with pytest.raises(DataError, match=r"where GLUE QNLI has \['question', 'sentence', 'label'\]"):
        load_task("qnli", data_dir=str(folder))
    with pytest.raises(DataError, match="point --data-dir at GLUE's RTE folder"):
        load_task("rte", data_dir=str((tmp_path / "empty").mkdir() or tmp_path / "empty"))


def test_a_saved_dataset_dict_serves_a_glue_task_and_a_file_task(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence1": [f"a{i}" for i in range(8)],
                                             "sentence2": [f"b{i}" for i in range(8)],
                                             "label": [i % 2 for i in range(8)]}, features=features),
        "validation": datasets.Dataset.from_dict({"sentence1": ["x"], "sentence2": ["y"], "label": [1]},
                                                 features=features),
    })
    saved.save_to_disk(str(tmp_path / "rte_saved"))
    data = load_task("rte", data_dir=str(tmp_path / "rte_saved"))
    assert data.spec == GLUE_TASKS["rte"] and data.num_examples("train") == 8
    assert data.split("validation")["label"] == [1]
    generic = load_task(str(tmp_path / "rte_saved"), text_columns=("sentence1", "sentence2"), task_name="rte-copy")
    assert generic.spec.label_names == ("entailment", "not_entailment") and generic.spec.name == "rte-copy"


def test_a_saved_test_split_label_of_minus_one_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence": ["c"], "label": [-1]}),
    })
    saved.save_to_disk(str(tmp_path / "sst2"))
    with pytest.raises(DataError, match=r"split 'validation' row 1: unknown label -1"):
        load_task("sst2", data_dir=str(tmp_path / "sst2"))


def test_file_tasks_take_a_task_name_and_a_metric(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    data = load_task(str(path), task_name="cola", metric="matthews")
    assert (data.spec.name, data.spec.metric, data.spec.source) == ("cola", "matthews", "file")
    assert task_name_of(str(path), {"task_name": "cola"}) == "cola" and task_name_of(str(path)) == "train"
    with pytest.raises(DataError, match="does not fit a classification task"):
        load_task(str(path), metric="pearson_spearman")
    with pytest.raises(DataError, match="apply to file tasks"):
        load_task("rte", metric="f1")


def test_recorded_task_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("text,label\na,0\n")
    (tmp_path / "RTE").mkdir()
    assert absolute_task_ref("d.csv", {"data_dir": None})["task"] == str(tmp_path / "d.csv")
    assert absolute_task_ref("rte", {"data_dir": "RTE"}) == {"task": "rte", "options": {"data_dir": str(tmp_path / "RTE")}}


# --- the file reader's refusals ------------------------------------------------------------------------

def test_a_csv_field_over_128_kb_is_read(tmp_path):
    long_text = "word " * 40_000  # 200 KB: csv's default field limit is 128 KB
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + f'"{long_text}",a\n' + "short,b\n" * 9)
    data = load_task(str(path), validation_file=None)
    texts = data.split("train")["text"] + data.split("validation")["text"]
    assert long_text in texts


def test_a_stray_quote_in_a_csv_is_a_line_named_error_not_merged_rows(tmp_path):
    path = tmp_path / "rte.csv"
    path.write_text('text,label\nfine,a\n"quoted start, then more,b\nnext,a\nlast,b\n')
    with pytest.raises(DataError, match=r"rte.csv line 3 has 1 fields but the header has 2 \(a stray quote"):
        load_task(str(path))


@pytest.mark.parametrize("body, message", [
    ("a,pos\nb,neg\nc\n", r"d.csv line 4 has 1 fields but the header has 2"),
    ("a,pos\n,neg\nc,pos\n", r"d.csv line 3: empty text in column 'text'"),
    ("a,pos\nb,\nc,pos\n", r"d.csv line 3: missing label in column 'label'"),
])
def test_ragged_rows_empty_texts_and_missing_labels_name_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + body)
    with pytest.raises(DataError, match=message) as info:
        load_task(str(path), validation_file=str(path))
    assert "\n" not in str(info.value)


def test_a_validation_label_not_among_the_training_labels_is_an_error(tmp_path):
    train, validation = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    train.write_text("\n".join(json.dumps({"text": f"t{i}", "label": ["pos", "neg"][i % 2]}) for i in range(6)))
    validation.write_text(json.dumps({"text": "v", "label": "pos"}) + "\n" + json.dumps({"text": "w", "label": "meh"}))
    with pytest.raises(DataError, match=r"v.jsonl line 2: unknown label 'meh'"):
        load_task(str(train), validation_file=str(validation))


def test_a_hub_id_in_the_local_cache_serves_a_glue_task(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    cached = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence1": ["e"], "sentence2": ["f"], "label": [1]}),
    })

    def load_dataset(*args, **kwargs):
        calls.append((args, datasets.config.HF_HUB_OFFLINE))
        return cached

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_task("rte", data_dir="someone/rte-copy")
    assert calls == [(("someone/rte-copy", "rte"), True)]  # offline (the tests' env): the cache only
    assert data.spec == GLUE_TASKS["rte"] and data.num_examples("train") == 2
