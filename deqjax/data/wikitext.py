"""WikiText as a TFDS dataset read from local files, with the Transformer-XL vocabulary.

Vocabulary and tokenisation follow the reference (Transformer-XL's `Vocab` for
`wt103` / `wt2`): each line is stripped, split on whitespace and ends with
`<eos>`; the vocabulary is built from the training split only, case-sensitive,
`<eos>` first, then every other type by decreasing count (ties in order of
first occurrence). WikiText-103 gives 267,735 types, WikiText-2 33,278.
Words of other splits that the training split lacks become `<unk>`.

The builder writes each split as one ordered token stream cut into records of
`RECORD_TOKENS` ids (array_record, no shuffling) and the vocabulary into the
dataset's metadata; `load_wikitext` reads them back through TFDS data sources,
without TensorFlow.

Nothing is downloaded: the files come from a manual directory holding
`wiki.{train,valid,test}.tokens` (directly, in a `wikitext-103/` or
`wikitext-2/` folder, or inside the official zip).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

EOS = "<eos>"
UNK = "<unk>"
RECORD_TOKENS = 1 << 16  # ids per stored record
SPLITS = ("train", "validation", "test")


def tokenize(line: str) -> list[str]:
  """One line's symbols: whitespace-split words and a final `<eos>`."""
  return line.split() + [EOS]


def build_vocab(lines: Iterable[str]) -> list[str]:
  """The training split's types: `<eos>`, then by decreasing count, ties by first occurrence."""
  counts = collections.Counter()
  for line in lines:
    counts.update(tokenize(line))
  del counts[EOS]
  return [EOS] + [word for word, _ in counts.most_common()]


def encode(lines: Iterable[str], vocab: list[str] | dict[str, int]) -> np.ndarray:
  """The token stream of `lines` as int32 ids; words outside `vocab` become `<unk>`."""
  index = vocab if isinstance(vocab, dict) else {word: i for i, word in enumerate(vocab)}
  unk = index.get(UNK)
  ids = []
  for line in lines:
    for word in tokenize(line):
      i = index.get(word, unk)
      if i is None:
        raise ValueError(f"Word {word!r} is not in the vocabulary, which has no {UNK!r} to map it to.")
      ids.append(i)
  return np.asarray(ids, np.int32)


@dataclasses.dataclass
class WikitextConfig(tfds.core.BuilderConfig):
  """Which file of the manual directory feeds each split, and where the files may sit."""

  files: tuple[tuple[str, str], ...] = ()  # (split, file name)
  folders: tuple[str, ...] = ()  # sub-folders of the manual directory to look in
  zip_name: str | None = None  # the official archive, with the files in one of `folders`


def _standard(name: str, folder: str, zip_name: str, description: str) -> WikitextConfig:
  files = (("train", "wiki.train.tokens"), ("validation", "wiki.valid.tokens"), ("test", "wiki.test.tokens"))
  return WikitextConfig(name=name, description=description, files=files, folders=("", folder), zip_name=zip_name)


class Wikitext(tfds.core.GeneratorBasedBuilder):
  """WikiText-103 / WikiText-2 token streams (ids) with the training-split vocabulary in the metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Ordered token streams, Transformer-XL vocabulary."}
  BUILDER_CONFIGS = [
    _standard("wikitext103", "wikitext-103", "wikitext-103-v1.zip", "WikiText-103 (267,735 types)."),
    _standard("wikitext2", "wikitext-2", "wikitext-2-v1.zip", "WikiText-2 (33,278 types)."),
    WikitextConfig(
      name="wikitext2_sample",
      description=(
        "The WikiText-2 validation file as training text and its test file for validation and test"
        " (the bundled CPU sample; the vocabulary comes from the validation file)."
      ),
      files=(("train", "wiki.valid.tokens"), ("validation", "wiki.test.tokens"), ("test", "wiki.test.tokens")),
      folders=("", "wikitext-2"),
      zip_name="wikitext-2-v1.zip",
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens (or the official wikitext-103-v1.zip /"
    " wikitext-2-v1.zip) in the manual directory."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict({"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
      homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
    )

  def _split_generators(self, dl_manager):
    paths = find_files(dl_manager.manual_dir, self.builder_config)
    self.info.metadata["source"] = source_identity(dl_manager.manual_dir, paths)
    vocab = build_vocab(_read_lines(paths["train"]))
    self.info.metadata["vocab"] = vocab
    index = {word: i for i, word in enumerate(vocab)}
    self.info.metadata["num_tokens"] = {}
    return {split: self._generate_examples(split, path, index) for split, path in paths.items()}

  def _generate_examples(self, split: str, path, index: dict[str, int]) -> Iterator[tuple[int, dict]]:
    stream = encode(_read_lines(path), index)
    self.info.metadata["num_tokens"][split] = int(stream.size)
    for k, start in enumerate(range(0, stream.size, RECORD_TOKENS)):
      yield k, {"ids": stream[start : start + RECORD_TOKENS]}


@dataclasses.dataclass(frozen=True)
class _ZipMember:
  archive: str
  member: str


def find_files(manual_dir, config: WikitextConfig) -> dict:
  """The path (or zip member) of each split's file; a clear error naming what is missing."""
  manual_dir = os.fspath(manual_dir)
  needed = dict(config.files)
  for folder in config.folders:
    paths = {split: os.path.join(manual_dir, folder, name) for split, name in needed.items()}
    if all(os.path.isfile(p) for p in paths.values()):
      return paths
  if config.zip_name and os.path.isfile(os.path.join(manual_dir, config.zip_name)):
    archive = os.path.join(manual_dir, config.zip_name)
    members = set(zipfile.ZipFile(archive).namelist())
    for folder in config.folders:
      inside = {split: f"{folder}/{name}" if folder else name for split, name in needed.items()}
      if all(m in members for m in inside.values()):
        return {split: _ZipMember(archive, m) for split, m in inside.items()}
  where = " or ".join(os.path.join(manual_dir, f) if f else manual_dir for f in config.folders)
  zipped = f", or the archive {os.path.join(manual_dir, config.zip_name)}" if config.zip_name else ""
  names = sorted(set(needed.values()))
  raise FileNotFoundError(f"WikiText config {config.name!r} needs {names} in {where}{zipped}; not found.")


def _read_lines(path) -> Iterator[str]:
  """The lines of a tokens file (or zip member); a file that is not UTF-8 text is named in the error."""
  try:
    if isinstance(path, _ZipMember):
      with zipfile.ZipFile(path.archive) as archive, archive.open(path.member) as f:
        for raw in f:
          yield raw.decode("utf-8")
    else:
      with open(path, encoding="utf-8") as f:
        yield from f
  except UnicodeDecodeError as error:
    where = f"{path.archive}:{path.member}" if isinstance(path, _ZipMember) else path
    raise ValueError(
      f"{where} is not UTF-8 text (byte {error.object[error.start : error.start + 1]!r} near offset {error.start});"
      " it must be a WikiText tokens file."
    ) from None


def source_identity(manual_dir, paths: dict) -> dict:
  """Where a prepared dataset came from: the folder, and each split file's name, size and SHA-256."""
  files = {}
  for split, path in sorted(paths.items()):
    file = path.archive if isinstance(path, _ZipMember) else path
    digest = hashlib.sha256()
    with open(file, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
    name = f"{os.path.basename(file)}:{path.member}" if isinstance(path, _ZipMember) else os.path.basename(file)
    files[split] = {"file": name, "bytes": os.path.getsize(file), "sha256": digest.hexdigest()}
  return {"manual_dir": os.path.abspath(os.fspath(manual_dir)), "files": files}


def check_source(name: str, prepared: dict | None, manual_dir: str, data_dir: str, builder_config) -> None:
  """Refuses to serve a prepared dataset whose source files are not those in `manual_dir` (or are missing)."""
  where = f"data_dir={data_dir!r} holds wikitext/{name}"
  if prepared is None:
    print(f"Note: {where} prepared without a record of its source files; it cannot be checked against manual_dir.")
    return
  origin = f"{where}, prepared from {prepared['manual_dir']}"
  fix = f"Point manual_dir at those files, use another data_dir, or delete {data_dir}/wikitext/{name} to prepare again."
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir={manual_dir!r} is not a directory, and {origin}. {fix}")
  now = source_identity(manual_dir, find_files(manual_dir, builder_config))
  brief = lambda f: f"{f['file']}, {f['bytes']:,} bytes, sha256 {f['sha256'][:12]}" if f else "nothing"
  differing = [
    f"{split}: {brief(prepared['files'].get(split))} there; {brief(now['files'][split])} in manual_dir"
    for split in sorted(now["files"])
    if prepared["files"].get(split) != now["files"][split]
  ]
  if differing:
    raise ValueError(
      f"manual_dir={manual_dir!r} does not hold the files {origin}:\n  " + "\n  ".join(differing) + f"\n{fix}"
    )


@contextlib.contextmanager
def _preparing(dataset_dir: str):
  """Holds an exclusive lock on `<dataset_dir>.lock` (on a local disk), so that runs started together on a
  fresh data_dir prepare the dataset once: TFDS's own preparation fails in every process but the first to
  finish (its final rename finds the folder there). Remote data_dirs (gs://...) are prepared unlocked."""
  if "://" in dataset_dir:
    yield
    return
  os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
  with open(f"{dataset_dir}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    yield


@dataclasses.dataclass(frozen=True)
class WikitextData:
  """A WikiText dataset in memory: the vocabulary and each split's token stream (int32 ids)."""

  name: str
  vocab: tuple[str, ...]
  splits: dict[str, np.ndarray]

  def decode(self, ids) -> str:
    return " ".join(self.vocab[int(i)] for i in ids)


def load_wikitext(name: str, manual_dir: str, data_dir: str | None = None) -> WikitextData:
  """Builds (once) and reads the TFDS dataset `wikitext/<name>` from `manual_dir`.

  Args:
    name: "wikitext103", "wikitext2" or "wikitext2_sample".
    manual_dir: folder with the WikiText files (see the module docstring).
    data_dir: where TFDS keeps the prepared dataset (None: TFDS's default).

  Returns:
    A `WikitextData` with all three splits.
  """
  names = [c.name for c in Wikitext.BUILDER_CONFIGS]
  if name not in names:
    raise ValueError(f"Unknown WikiText config name={name!r}; expected one of {names}.")
  make_builder = lambda: Wikitext(config=name, data_dir=data_dir, file_format="array_record")
  builder, prepared_here = make_builder(), False
  if not builder.is_prepared():
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"manual_dir={manual_dir!r} is not a directory; it must hold the WikiText files.")
    find_files(manual_dir, builder.builder_config)  # names the missing files before TFDS starts
    with _preparing(os.path.dirname(os.fspath(builder.data_dir))):
      builder = make_builder()  # another process may have prepared it while this one waited
      if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        prepared_here = True
  if not prepared_here:
    prepared = builder.info.metadata.get("source")
    check_source(name, prepared, manual_dir, str(builder.data_dir_root), builder.builder_config)
  vocab = tuple(builder.info.metadata["vocab"])
  splits = {}
  for split in SPLITS:
    source = builder.as_data_source(split=split)
    records = [source[i]["ids"] for i in range(len(source))]
    splits[split] = np.concatenate(records).astype(np.int32) if records else np.zeros((0,), np.int32)
    expected = builder.info.metadata["num_tokens"][split]
    if splits[split].size != expected:
      raise ValueError(f"Prepared split {split!r} holds {splits[split].size} tokens; its metadata says {expected}.")
  return WikitextData(name, vocab, splits)
