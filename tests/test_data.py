"""Corpus -> tokenizer -> token shards through the public data API: identity, reuse, held-out split, batches."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch

import optsweep.data.prepare
import optsweep.testing.trainers as synth
from conftest import small_study
from optsweep.data.batches import TrainBatches, load_shards, val_batches
from optsweep.data.prepare import ensure_prepared, tokenizing_processes
from optsweep.params.settings import DataSettings, ParamsError, StudyParams, validate_params

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
    monkeypatch.setattr(optsweep.data.prepare, "ENCODE_BATCH", 4)  # 60 documents: 15 batches
    monkeypatch.setattr(optsweep.data.prepare, "CHECKPOINT_BATCHES", 1)
    encode = optsweep.data.prepare.DocumentEncoder.__call__
    batches = []

    def counted(self, texts, stop_at=None):
        batches.append(len(texts))
        if len(batches) == 6 and stop_at == "stop":
            raise KeyboardInterrupt  # Ctrl-C while tokenizing the 6th batch: 5 were written and saved
        return encode(self, texts)

    monkeypatch.setattr(optsweep.data.prepare.DocumentEncoder, "__call__",
                        lambda self, texts: counted(self, texts, "stop"))
    params = files_params(doc_corpus, tmp_path / "data", num_proc=1)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(params)
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(optsweep.data.prepare.DocumentEncoder, "__call__", counted)
    batches.clear()
    resumed = ensure_prepared(params)
    assert len(batches) == 15 - 5  # only what was not written yet
    fresh = ensure_prepared(files_params(doc_corpus, tmp_path / "fresh", num_proc=1))
    assert resumed["hash"] == fresh["hash"] and resumed["train_tokens"] == fresh["train_tokens"]


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


def test_small_corpora_tokenize_in_one_process_and_large_ones_on_every_core():
    assert tokenizing_processes(DataSettings(train_tokens=120_000, val_tokens=4096)) == 1
    assert tokenizing_processes(DataSettings(train_tokens=60_000_000_000)) == (os.cpu_count() or 1)
    assert tokenizing_processes(DataSettings(train_tokens=120_000, num_proc=2)) == 2
