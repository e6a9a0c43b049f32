"""WikiText through TFDS on the real WikiText-2 files, the vocabulary rules, and the ordered LM stream."""

import concurrent.futures
import os
import shutil
import zipfile

import numpy as np
import pytest
from paths import REPO, SHARED

from deqjax.data import EOS, UNK, OrderedLMStream, build_vocab, encode, load_wikitext

REAL = os.path.join(SHARED, "data", "wikitext-2")
BUNDLED = os.path.join(REPO, "experiments", "data", "wikitext-2")
TRAIN_TEXT = " = Valkyria = \n\n the game 's battle system , the <unk> was \n the game began in 2010 . \n"


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  """The real WikiText-2 valid / test files beside a small generated training file."""
  folder = tmp_path_factory.mktemp("wikitext-2")
  for name in ("wiki.valid.tokens", "wiki.test.tokens"):
    shutil.copy(os.path.join(REAL, name), folder / name)
  (folder / "wiki.train.tokens").write_text(TRAIN_TEXT, encoding="utf-8")
  return folder


def test_vocabulary_rules():
  vocab = build_vocab(TRAIN_TEXT.splitlines(keepends=True))
  # <eos> first, then by count (the: 3, game: 2, =: 2 ...), ties in order of first occurrence.
  assert vocab[:4] == [EOS, "the", "=", "game"]
  assert len(vocab) == 1 + len(set(TRAIN_TEXT.split()))
  ids = encode(["the unseen game \n"], vocab)
  assert [vocab[i] for i in ids] == ["the", UNK, "game", EOS]
  with pytest.raises(ValueError, match="no '<unk>'"):
    encode(["unseen"], ["<eos>", "the"])


def test_real_wikitext2_token_counts(manual_dir, tmp_path):
  data = load_wikitext("wikitext2", str(manual_dir), str(tmp_path))
  assert data.splits["validation"].size == 217_646 and data.splits["test"].size == 245_569
  assert data.splits["train"].size == len(TRAIN_TEXT.splitlines()) + len(TRAIN_TEXT.split())
  assert list(data.vocab) == build_vocab(TRAIN_TEXT.splitlines())
  # Every validation word outside the tiny training vocabulary is <unk>; <eos> ends each of the 3,760 lines.
  assert int(np.sum(data.splits["validation"] == data.vocab.index(EOS))) == 3_760
  assert data.decode(data.splits["train"][:6]) == "= Valkyria = <eos> <eos> the"
  # A second load reads the prepared dataset, once the files it was made from are found again
  # (by content: a copy elsewhere will do).
  copy = shutil.copytree(manual_dir, tmp_path / "moved")
  again = load_wikitext("wikitext2", str(copy), str(tmp_path))
  np.testing.assert_array_equal(again.splits["test"], data.splits["test"])


def test_runs_started_together_prepare_the_dataset_once(manual_dir, tmp_path):
  # Without the lock, TFDS's final rename fails in every preparer but the first to finish.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    loads = [pool.submit(load_wikitext, "wikitext2", str(manual_dir), str(tmp_path)) for _ in range(3)]
    results = [load.result() for load in loads]
  for data in results:
    assert data.vocab == results[0].vocab and data.splits["test"].size == 245_569
    np.testing.assert_array_equal(data.splits["validation"], results[0].splits["validation"])


def test_a_prepared_dataset_is_never_served_for_other_or_missing_files(manual_dir, tmp_path):
  load_wikitext("wikitext2", str(manual_dir), str(tmp_path / "tfds"))
  prepared_from = f"holds wikitext/wikitext2, prepared from {manual_dir}"
  with pytest.raises(
    FileNotFoundError, match=f"manual_dir='{tmp_path}/absent' is not a directory, and .*{prepared_from}"
  ):
    load_wikitext("wikitext2", str(tmp_path / "absent"), str(tmp_path / "tfds"))
  other = shutil.copytree(manual_dir, tmp_path / "other")
  (other / "wiki.train.tokens").write_text(TRAIN_TEXT + " one more line \n", encoding="utf-8")
  with pytest.raises(ValueError) as caught:
    load_wikitext("wikitext2", str(other), str(tmp_path / "tfds"))
  lines = str(caught.value).splitlines()
  assert lines[0] == f"manual_dir='{other}' does not hold the files data_dir='{tmp_path / 'tfds'}' {prepared_from}:"
  size = len(TRAIN_TEXT.encode())
  assert lines[1].startswith(f"  train: wiki.train.tokens, {size:,} bytes, sha256 ")
  assert f"; wiki.train.tokens, {size + 16:,} bytes, sha256 " in lines[1] and len(lines) == 3  # test, valid agree
  assert lines[2].startswith("Point manual_dir at those files, use another data_dir, or delete ")


def test_a_tokens_file_that_is_not_text_is_named(manual_dir, tmp_path):
  garbage = shutil.copytree(manual_dir, tmp_path / "garbage")
  (garbage / "wiki.valid.tokens").write_bytes(b"fine words \n" + bytes(range(128, 256)))
  with pytest.raises(
    ValueError, match=rf"{garbage}/wiki.valid.tokens is not UTF-8 text \(byte b'\\x80' near offset 12\)"
  ):
    load_wikitext("wikitext2", str(garbage), str(tmp_path / "tfds"))


def test_bundled_sample_and_the_official_zip(tmp_path):
  data = load_wikitext("wikitext2_sample", BUNDLED, str(tmp_path / "tfds"))
  assert len(data.vocab) == 13_777 and data.splits["train"].size == 217_646
  assert data.splits["test"].size == 245_569
  archive = tmp_path / "zipped" / "wikitext-2-v1.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w") as z:
    for name in ("wiki.valid.tokens", "wiki.test.tokens"):
      z.write(os.path.join(BUNDLED, name), f"wikitext-2/{name}")
  zipped = load_wikitext("wikitext2_sample", str(archive.parent), str(tmp_path / "tfds_zip"))
  assert zipped.vocab == data.vocab
  np.testing.assert_array_equal(zipped.splits["train"], data.splits["train"])


def test_missing_or_incomplete_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    load_wikitext("wikitext103", str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
  (tmp_path / "wiki.train.tokens").write_text("a b\n")
  with pytest.raises(FileNotFoundError, match=r"wiki\.test\.tokens.*wiki\.train\.tokens.*wiki\.valid\.tokens"):
    load_wikitext("wikitext103", str(tmp_path), str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="Unknown WikiText config"):
    load_wikitext("wikitext5", str(tmp_path), str(tmp_path / "tfds"))


def test_ordered_stream_layout():
  tokens = np.arange(103)
  stream = OrderedLMStream(tokens, batch_size=4, tgt_len=5)
  assert stream.data.shape == (4, 25) and stream.num_segments == 4  # (25 - 1) // 5
  x0, y0 = stream.segment(0)
  x1, _ = stream.segment(1)
  np.testing.assert_array_equal(x0[1], np.arange(25, 30))  # row i is the i-th stretch of text
  np.testing.assert_array_equal(y0, x0 + 1)  # targets are the next tokens
  np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # segments continue each row
  np.testing.assert_array_equal(stream.segment(4)[0], x0)  # the next epoch starts again
  assert stream.epoch(4) == 1
  segments = list(stream.eval_segments())
  assert [x.shape[1] for x, _ in segments] == [5, 5, 5, 5, 4]  # all 24 predictable columns
  np.testing.assert_array_equal(np.concatenate([y for _, y in segments], axis=1), stream.data[:, 1:])
  half = OrderedLMStream(tokens, batch_size=4, tgt_len=5, rows=(2, 4))
  np.testing.assert_array_equal(half.segment(3)[0], stream.segment(3)[0][2:])


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    (dict(tokens=np.zeros((2, 3), np.int32), batch_size=1, tgt_len=1), TypeError, r"1-D integer.*\(2, 3\)"),
    (dict(tokens=np.zeros(10, np.int32), batch_size=0, tgt_len=2), ValueError, "batch_size must be"),
    (dict(tokens=np.zeros(10, np.int32), batch_size=5, tgt_len=2), ValueError, r"10 tokens gives 5 rows of 2"),
    (dict(tokens=np.zeros(10, np.int32), batch_size=2, tgt_len=2, rows=(1, 3)), ValueError, "rows="),
  ],
)
def test_stream_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    OrderedLMStream(**kwargs)
