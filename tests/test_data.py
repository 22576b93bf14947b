"""Corpus -> tokenizer -> token shards through the public data API: identity, reuse, held-out split, batches."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import yaml

import optsweep.data.prepare
import optsweep.data.shards
import optsweep.testing.trainers as synth
from conftest import small_study
from optsweep.data.batches import TrainBatches, load_shards, val_batches
from optsweep.data.prepare import ensure_prepared, tokenizing_processes
from optsweep.params.settings import ParamsError, StudyParams, load_params, validate_params
from optsweep.params.study import DataSettings

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


@pytest.fixture(scope="module")
def doc_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small documents; every line names its document, so any window of text says where it came from."""
    folder = tmp_path_factory.mktemp("docs")
    rng = random.Random(0)
    for doc in range(60):
        lines = [f"doc{doc:03d} " + " ".join(rng.choices(WORDS, k=6)) for _ in range(12)]
        (folder / f"{doc:03d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def files_params(corpus: Path, data_dir: Path, **data: Any) -> StudyParams:
    raw = small_study(data_dir)
    raw["study"]["data"] = {"source": "files", "paths": [str(corpus / "*.txt")], "dir": str(data_dir),
                            "train_tokens": 1_000_000, "val_tokens": 1500, **data}
    raw["study"]["tokenizer"] = {"kind": "train", "vocab_size": 300, "train_chars": 1_000_000}
    return validate_params(raw)


def doc_ids(text: str) -> set[str]:
    return set(re.findall(r"doc(\d{3})", text))


def test_identity_describes_the_prepared_shards(prepared_data, prepared_params):
    data = prepared_data
    assert data["dir"] == prepared_params.study.data.dir
    assert data["tokenizer"] == "bpe-512" and data["vocab_size"] == 512 and data["dtype"] == "uint16"
    assert data["train_tokens"] == 120_000 and data["val_tokens"] == 4096 and data["seed"] == 0
    assert re.fullmatch(r"[0-9a-f]{16}", data["hash"]) and re.fullmatch(r"[0-9a-f]{16}", data["corpus_hash"])
    shards = load_shards(data)
    assert len(shards.train) == 120_000 and len(shards.val) == 4096 and shards.train.dtype == np.uint16
    assert int(shards.train.max()) < 512
    text = shards.tokenizer.decode(shards.val[:200].tolist())
    assert "def " in text or "import " in text or "class " in text  # Python standard library source


# Run in a project folder with that folder's own lib/ on PYTHONPATH: the key of one run, and its paths.
CLONE_KEY = """
import json
import optsweep
from optsweep.params.settings import load_params
from optsweep.data import ensure_prepared
from optsweep.runs.store import RunStore, run_key
from optsweep.runs.trainer import DEFAULT_TRAINER, code_identity, make_run_spec
params = load_params("params/study.yaml")
baseline, _ = params.scale_space("a")
spec = make_run_spec(params, "a", baseline, ensure_prepared(params))
spec["checkpoint_dir"] = str(RunStore(params.study.store).checkpoint_dir("k"))
print(json.dumps({"key": run_key(spec, DEFAULT_TRAINER, code_identity(DEFAULT_TRAINER)), "data": spec["data"]["dir"],
                  "checkpoints": spec["checkpoint_dir"], "code": optsweep.__file__}))
"""


def test_a_clone_elsewhere_has_absolute_paths_in_its_run_specs_and_the_same_run_keys(doc_corpus, tmp_path):
    """A project (its library, params with relative data and store paths, its prepared data) copied to another
    folder: the run specs name the copy's own folders, and every run key stays the same."""
    raw = small_study(Path("data/prepared"))
    raw["study"].update(store="runs", data={"source": "files", "paths": [str(doc_corpus / "*.txt")],
                                            "dir": "data/prepared", "train_tokens": 4000, "val_tokens": 1500})
    raw["study"]["tokenizer"] = {"kind": "train", "vocab_size": 300, "train_chars": 1_000_000}
    first, clone = tmp_path / "first", tmp_path / "elsewhere" / "clone"
    shutil.copytree(synth.REPO / "lib", first / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    (first / "params").mkdir()
    (first / "params" / "study.yaml").write_text(yaml.safe_dump(raw))

    def key_in(project: Path) -> dict[str, str]:
        shown = subprocess.run([sys.executable, "-c", CLONE_KEY], cwd=project, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(project / "lib")}, timeout=300)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout.splitlines()[-1])

    original = key_in(first)  # prepares the data in `first`
    shutil.copytree(first, clone)
    copied = key_in(clone)  # reuses the copied data
    for project, seen in ((first, original), (clone, copied)):
        assert seen["data"] == str(project / "data" / "prepared")
        assert seen["checkpoints"] == str(project / "runs" / "checkpoints" / "k")
        assert seen["code"] == str(project / "lib" / "optsweep" / "__init__.py")
    assert copied["key"] == original["key"]


def test_unchanged_settings_reuse_the_shards(prepared_data, prepared_params):
    meta = Path(prepared_data["dir"]) / "meta.json"
    built = meta.stat().st_mtime_ns
    assert ensure_prepared(prepared_params) == prepared_data
    assert meta.stat().st_mtime_ns == built


def test_validation_tokens_never_appear_in_training_batches(doc_corpus, tmp_path):
    data = ensure_prepared(files_params(doc_corpus, tmp_path / "data"))
    shards = load_shards(data)
    val_docs = doc_ids(shards.tokenizer.decode(shards.val.tolist()))
    batches = TrainBatches(shards.train, batch_size=8, seq_len=16, seed=data["seed"])
    epoch = -(-batches.n_windows // 8)
    train_docs: set[str] = set()
    for step in range(epoch):
        for row in batches.batch(step):
            train_docs |= doc_ids(shards.tokenizer.decode(row.tolist()))
    assert val_docs and train_docs
    assert val_docs.isdisjoint(train_docs)
    # The corpus runs out before the training budget: every document after the held-out prefix is trained
    # on, and the prefix's surplus beyond the validation budget is dropped rather than trained on.
    assert len(val_docs) + len(train_docs) <= 60 and len(train_docs) >= 30


def test_data_seed_fixes_split_and_order(doc_corpus, tmp_path):
    first = ensure_prepared(files_params(doc_corpus, tmp_path / "one"))
    again = ensure_prepared(files_params(doc_corpus, tmp_path / "two"))
    other = ensure_prepared(files_params(doc_corpus, tmp_path / "three", seed=1))
    assert first["hash"] == again["hash"] and first["hash"] != other["hash"]
    assert first["corpus_hash"] == other["corpus_hash"]
    shards = load_shards(first)
    a, b = (TrainBatches(shards.train, 4, 16, seed).batch(3) for seed in (0, 0))
    assert torch.equal(a, b) and a.shape == (4, 17)
    assert not torch.equal(a, TrainBatches(shards.train, 4, 16, seed=1).batch(3))
    # A different batch size regroups the same stream of windows.
    wide = TrainBatches(shards.train, 8, 16, seed=0).batch(1)
    narrow = torch.cat([TrainBatches(shards.train, 4, 16, seed=0).batch(s) for s in (2, 3)])
    assert torch.equal(wide, narrow)


def test_batches_continue_into_a_new_epoch_order(prepared_data):
    shards = load_shards(prepared_data)
    batches = TrainBatches(shards.train, batch_size=8, seq_len=32, seed=0)
    epoch_steps = batches.n_windows // 8
    starts = np.concatenate([batches.window_starts(s) for s in range(epoch_steps)])
    assert len(set(starts.tolist())) == len(starts)  # no window twice within an epoch
    next_epoch = np.concatenate([batches.window_starts(s) for s in range(epoch_steps, 2 * epoch_steps)])
    assert not np.array_equal(starts, next_epoch)


def test_val_batches_cover_the_requested_tokens_in_order(prepared_data):
    shards = load_shards(prepared_data)
    everything = val_batches(shards.val, batch_size=8, seq_len=32)
    assert sum(b.shape[0] for b in everything) == (4096 - 1) // 32
    assert torch.equal(everything[0][0], torch.from_numpy(shards.val[:33].astype(np.int64)))
    assert sum(b.shape[0] for b in val_batches(shards.val, 8, 32, max_tokens=320)) == 10


def test_a_killed_preparation_is_never_reused(doc_corpus, tmp_path, monkeypatch):
    params = files_params(doc_corpus, tmp_path / "data")

    def killed_while_writing(texts, encode, folder, data, dtype, processes):
        (folder / "train.bin").write_bytes(b"\0" * 64)
        raise KeyboardInterrupt

    monkeypatch.setattr(optsweep.data.prepare, "write_shards", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(params)
    assert not (tmp_path / "data").exists()
    monkeypatch.undo()
    data = ensure_prepared(params)
    assert len(load_shards(data).train) == data["train_tokens"] > 32
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.build")] == []


def test_changed_settings_replace_the_shards(doc_corpus, tmp_path):
    first = ensure_prepared(files_params(doc_corpus, tmp_path / "data"))
    second = ensure_prepared(files_params(doc_corpus, tmp_path / "data", val_tokens=800), replace=True)
    assert second["val_tokens"] == 800 and second["hash"] != first["hash"]
    assert len(load_shards(second).val) == 800
    with pytest.raises(ValueError, match="optsweep prepare"):
        load_shards({**first, "hash": "0" * 16})


def test_missing_corpus_path_is_a_params_error(tmp_path):
    params = files_params(tmp_path / "nowhere", tmp_path / "data")
    with pytest.raises(ParamsError, match=r"study\.data\.paths: .*nowhere.* matches no file"):
        ensure_prepared(params)
    assert not (tmp_path / "data").exists()


def test_refuses_a_folder_that_is_not_prepared_data(doc_corpus, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ParamsError, match=r"study\.data\.dir"):
        ensure_prepared(files_params(doc_corpus, tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_hub_source_streams_the_named_dataset(doc_corpus, tmp_path, monkeypatch):
    texts = [p.read_text() for p in sorted(doc_corpus.glob("*.txt"))]
    calls = []

    def local_hub(name, config=None, split=None, streaming=False, revision=None):
        calls.append((name, config, split, streaming, revision))
        return datasets.Dataset.from_dict({"content": texts}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", local_hub)
    raw = small_study(tmp_path / "data")
    raw["study"]["data"] = {"source": "hub", "hub_dataset": "someone/corpus", "hub_config": "small",
                            "text_column": "content", "dir": str(tmp_path / "data"), "hub_revision": "v1.2",
                            "train_tokens": 2000, "val_tokens": 500}
    raw["study"]["tokenizer"] = {"kind": "train", "vocab_size": 300, "train_chars": 100_000}
    data = ensure_prepared(validate_params(raw))
    assert calls and all(call == ("someone/corpus", "small", "train", True, "v1.2") for call in calls)
    assert data["revisions"] == {"hub_dataset": "v1.2"}
    assert data["train_tokens"] == 2000 and data["val_tokens"] == 500  # stopped at the token budget
    assert doc_ids(load_shards(data).tokenizer.decode(load_shards(data).train[:100].tolist()))

    raw["study"]["data"]["text_column"] = "text"
    with pytest.raises(ParamsError, match=r"study\.data\.text_column: no column 'text'.*content"):
        ensure_prepared(validate_params(raw))


def test_pretrained_tokenizer_by_name(prepared_data, doc_corpus, tmp_path):
    raw = small_study(tmp_path / "data")
    raw["study"]["data"] = {"source": "files", "paths": [str(doc_corpus / "*.txt")], "dir": str(tmp_path / "data"),
                            "train_tokens": 3000, "val_tokens": 500}
    raw["study"]["tokenizer"] = {"kind": "pretrained", "name": str(Path(prepared_data["dir"]) / "tokenizer")}
    data = ensure_prepared(validate_params(raw))
    assert data["tokenizer"] == raw["study"]["tokenizer"]["name"] and data["vocab_size"] == 512


def test_an_interrupted_preparation_resumes_where_it_stopped(doc_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(optsweep.data.shards, "ENCODE_BATCH", 4)  # 60 documents: 15 batches
    monkeypatch.setattr(optsweep.data.shards, "CHECKPOINT_BATCHES", 1)
    encode = optsweep.data.shards.DocumentEncoder.__call__
    batches = []

    def counted(self, texts, stop_at=None):
        batches.append(len(texts))
        if len(batches) == 6 and stop_at == "stop":
            raise KeyboardInterrupt  # Ctrl-C while tokenizing the 6th batch: 5 were written and saved
        return encode(self, texts)

    monkeypatch.setattr(optsweep.data.shards.DocumentEncoder, "__call__",
                        lambda self, texts: counted(self, texts, "stop"))
    params = files_params(doc_corpus, tmp_path / "data", num_proc=1)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(params)
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(optsweep.data.shards.DocumentEncoder, "__call__", counted)
    batches.clear()
    resumed = ensure_prepared(params)
    assert len(batches) == 15 - 5  # only what was not written yet
    fresh = ensure_prepared(files_params(doc_corpus, tmp_path / "fresh", num_proc=1))
    assert resumed["hash"] == fresh["hash"] and resumed["train_tokens"] == fresh["train_tokens"]


def test_an_interrupted_hub_preparation_reads_no_hub_shard_it_had_finished(doc_corpus, tmp_path, monkeypatch):
    """A hub dataset of 6 shards (10 documents each) stands in for the hub's files; the preparation is stopped
    after 5 batches of 3 documents were written (the first shard and half the second). The resumed one never
    opens the first shard again, and ends with the shards an uninterrupted preparation writes."""
    texts = [p.read_text() for p in sorted(doc_corpus.glob("*.txt"))]
    opened: list[int] = []

    def rows(shards: list[int]):
        for shard in shards:
            opened.append(shard)  # a download of one of the hub's files
            yield from ({"content": text} for text in texts[shard * 10:(shard + 1) * 10])

    features = datasets.Features({"content": datasets.Value("string")})  # known, as the hub's are
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **options: datasets.IterableDataset.from_generator(
        rows, features=features, gen_kwargs={"shards": list(range(6))}))
    monkeypatch.setattr(optsweep.data.shards, "ENCODE_BATCH", 3)
    monkeypatch.setattr(optsweep.data.shards, "CHECKPOINT_BATCHES", 1)

    def hub_params(folder: Path) -> StudyParams:
        raw = small_study(folder)
        raw["study"]["data"] = {"source": "hub", "hub_dataset": "someone/corpus", "text_column": "content",
                                "dir": str(folder), "train_tokens": 1_000_000, "val_tokens": 1500, "num_proc": 1}
        raw["study"]["tokenizer"] = {"kind": "train", "vocab_size": 300, "train_chars": 1_000_000}
        return validate_params(raw)

    whole = ensure_prepared(hub_params(tmp_path / "whole"))
    in_order = opened[len(opened) // 2:]  # the shards' pass (after the tokenizer's), one shard after the other
    assert sorted(in_order) == list(range(6))
    encode, batches = optsweep.data.shards.DocumentEncoder.__call__, []

    def stopping(self, texts):
        batches.append(len(texts))
        if len(batches) == 6:
            raise KeyboardInterrupt  # while tokenizing the 6th batch: 5 batches (15 documents) written
        return encode(self, texts)

    monkeypatch.setattr(optsweep.data.shards.DocumentEncoder, "__call__", stopping)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(hub_params(tmp_path / "data"))
    monkeypatch.setattr(optsweep.data.shards.DocumentEncoder, "__call__", encode)
    opened.clear()
    resumed = ensure_prepared(hub_params(tmp_path / "data"))
    assert opened == in_order[1:]  # the tokenizer was kept; the shard finished is not read again
    assert resumed["hash"] == whole["hash"] and resumed["train_tokens"] == whole["train_tokens"]


RECIPE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from optsweep.data import prepare
print(prepare.recipe_code())
"""


def test_the_data_recipe_changes_with_the_code_that_decides_the_shards_only(tmp_path, fresh_params_file):
    """The library copied and edited: a comment and the lock's code keep the recipe; the shard writer's code
    does not. `optsweep prepare --recipe` rewrites its file only when the recipe changed."""
    shutil.copytree(synth.REPO / "lib", tmp_path / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    package = tmp_path / "lib" / "optsweep" / "data"

    def recipe_code() -> str:
        shown = subprocess.run([sys.executable, "-c", RECIPE_SCRIPT, str(tmp_path / "lib")], capture_output=True,
                               text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.strip()

    def edit(module: str, old: str, new: str) -> None:
        source = package / module
        text = source.read_text()
        assert text.count(old) == 1
        source.write_text(text.replace(old, new))

    original = recipe_code()
    edit("prepare.py", "def locked(path: Path)", "# a comment\ndef locked(path: Path)")
    edit("prepare.py", 'with path.open("w") as handle:', 'with path.open("a") as handle:')
    assert recipe_code() == original
    edit("shards.py", "progress_path = folder / \"shards.json\"", "progress_path = folder / \"progress.json\"")
    assert recipe_code() != original

    recipe = tmp_path / "recipe.json"
    command = [synth.OPTSWEEP, "prepare", "--params", str(fresh_params_file()), "--recipe", str(recipe)]

    def write_recipe() -> int:
        written = subprocess.run(command, env=synth.cli_env(), capture_output=True, text=True, timeout=300)
        assert written.returncode == 0, written.stderr
        return recipe.stat().st_mtime_ns

    assert write_recipe() == write_recipe()  # unchanged: DVC sees nothing to rebuild
    assert json.loads(recipe.read_text())["code"] == optsweep.data.prepare.recipe_code()
    assert not (tmp_path / "data").exists()  # only the recipe was written


def test_several_processes_write_the_same_shards_as_one(doc_corpus, tmp_path):
    one = ensure_prepared(files_params(doc_corpus, tmp_path / "one", num_proc=1))
    two = ensure_prepared(files_params(doc_corpus, tmp_path / "two", num_proc=2))
    assert one["hash"] == two["hash"] and one["train_tokens"] == two["train_tokens"]


def test_other_settings_never_replace_prepared_data_unless_the_study_prepares(doc_corpus, tmp_path, capsys):
    study = ensure_prepared(files_params(doc_corpus, tmp_path / "data"))
    override = ensure_prepared(files_params(doc_corpus, tmp_path / "data", val_tokens=800))
    assert override["val_tokens"] == 800 and Path(override["dir"]).parent == tmp_path
    assert re.fullmatch(r"data-[0-9a-f]{8}", Path(override["dir"]).name)
    assert f"{tmp_path / 'data'} holds data prepared with other settings; it is kept" in capsys.readouterr().err
    assert optsweep.data.prepare.read_meta(tmp_path / "data")["identity"] == study  # untouched
    assert len(load_shards(study).val) == 1500 and len(load_shards(override).val) == 800
    assert ensure_prepared(files_params(doc_corpus, tmp_path / "data", val_tokens=800)) == override  # reused


def test_the_train_command_with_data_overrides_keeps_the_study_data(prepared_params_file, prepared_data):
    before = optsweep.data.prepare.read_meta(Path(prepared_data["dir"]))
    trained = subprocess.run(
        [str(Path(sys.executable).parent / "optsweep"), "train", "--params", str(prepared_params_file),
         "--scale", "a", "--set", "study.data.val_tokens=2048", "--set", "study.train.device=cpu"],
        env=synth.cli_env(), capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert "holds data prepared with other settings; it is kept" in trained.stderr
    assert optsweep.data.prepare.read_meta(Path(prepared_data["dir"])) == before


def test_pinned_revisions_reach_the_loaders_and_the_data_hash(doc_corpus, tmp_path, monkeypatch):
    import transformers

    ensure_prepared(files_params(doc_corpus, tmp_path / "base"))
    (tmp_path / "base" / "tokenizer").rename(tmp_path / "bpe")  # stands in for a pretrained tokenizer on the hub
    load, revisions = transformers.AutoTokenizer.from_pretrained, []

    def from_hub(name, revision=None, **options):
        revisions.append(revision)
        return load(name, **options)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_hub)
    identities = {}
    for revision in (None, "abc123"):
        raw = small_study(tmp_path / f"data-{revision}")
        raw["study"]["data"] = {"source": "files", "paths": [str(doc_corpus / "*.txt")], "train_tokens": 3000,
                                "val_tokens": 500, "dir": str(tmp_path / f"data-{revision}")}
        raw["study"]["tokenizer"] = {"kind": "pretrained", "name": str(tmp_path / "bpe"), "revision": revision}
        identities[revision] = ensure_prepared(validate_params(raw))
    assert "abc123" in revisions
    assert "revisions" not in identities[None] and identities["abc123"]["revisions"] == {"tokenizer": "abc123"}
    assert identities[None]["hash"] != identities["abc123"]["hash"]  # same tokens, another pin


def test_required_revisions_are_commits_checked_before_anything_is_downloaded(tmp_path, monkeypatch):
    def no_download(*args, **options):
        raise AssertionError("nothing may be downloaded before the pins are checked")

    monkeypatch.setattr(datasets, "load_dataset", no_download)
    paper = load_params(synth.REPO / "params" / "presets" / "paper.yaml").model_dump(mode="json")

    def paper_with(hub_revision: str | None) -> StudyParams:
        paper["study"]["data"].update(hub_revision=hub_revision, dir=str(tmp_path / "data"))
        return validate_params(paper)

    with pytest.raises(ParamsError, match=r"^study\.data\.hub_revision: unset; study\.data\.require_revisions asks "
                                          r"for the commit of HuggingFaceFW/fineweb-edu on the hub"):
        ensure_prepared(paper_with(None))
    with pytest.raises(ParamsError, match=r"^study\.data\.hub_revision: main; "):  # a branch: it moves
        ensure_prepared(paper_with("main"))
    with pytest.raises(ParamsError, match=r"^study\.tokenizer\.revision: unset; .* NousResearch/Llama-2-7b-hf"):
        ensure_prepared(paper_with("0123456789abcdef0123456789abcdef01234567"))
    assert not (tmp_path / "data").exists()


def test_small_corpora_tokenize_in_one_process_and_large_ones_on_every_core():
    assert tokenizing_processes(DataSettings(train_tokens=120_000, val_tokens=4096)) == 1
    assert tokenizing_processes(DataSettings(train_tokens=60_000_000_000)) == (os.cpu_count() or 1)
    assert tokenizing_processes(DataSettings(train_tokens=120_000, num_proc=2)) == 2
