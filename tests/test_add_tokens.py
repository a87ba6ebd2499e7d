"""``add-tokens``: the tokenizer as transformers' add_tokens + save_pretrained writes it, the
weights grown as resize_token_embeddings grows them, each new row the mean of its pieces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REAL

import ckptsurgeon
from ckptsurgeon.cli import main

WORDS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz[]")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["the", "chem", "##ical", "ben", "##zene", "ion"]
)
TEXTS = ["the chemical benzene", "an ion in the chem lab", "benzene [ion] chem"]


def cli(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with a WordPiece tokenizer (tokenizer.json and vocab.txt)."""
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("bert")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = tf.BertTokenizer(str(root / "vocab.txt"))
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)  # fmt: skip
    model = tf.BertForMaskedLM(cfg)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a bias worth carrying over
    src = root / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    shutil.copy(root / "vocab.txt", src)  # as BERT releases ship it (5.x saves tokenizer.json only)
    return src


def reference(src: Path, out: Path, tokens: list[str], special: bool = False) -> Any:
    """What transformers writes: add_tokens + save_pretrained."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    tok.add_tokens(tokens, special_tokens=special)
    tok.save_pretrained(str(out))
    return tok


def weights(folder: Path) -> dict[str, Any]:
    from conftest import reference_state

    from ckptsurgeon.formats.checkpoint import open_checkpoint

    assert open_checkpoint(folder)
    return reference_state(folder)


def test_tokenizer_files_ids_and_rows_are_transformers(bert, tmp_path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    tokens = ["benzene", "[ION]", "chem", "benzene"]  # chem is known; benzene twice
    flags = [x for t in tokens for x in ("--token", t)]
    r = cli("add-tokens", bert, tmp_path / "out", *flags)
    assert r.exit_code == 0, r.output
    assert "'chem' is already in the vocabulary: skipped" in r.output
    ref = reference(bert, tmp_path / "ref", tokens)
    for f in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    got = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    old = AutoTokenizer.from_pretrained(str(bert))
    assert len(got) == len(ref) == len(WORDS) + 2
    assert got.convert_tokens_to_ids(["benzene", "[ION]"]) == [len(WORDS), len(WORDS) + 1]
    slow_class = getattr(tf, "BertTokenizerLegacy", tf.BertTokenizer)  # 5.x: the Python one
    slow = slow_class.from_pretrained(str(tmp_path / "out"))
    if not (tmp_path / "ref" / "vocab.txt").exists():  # 5.x: save_pretrained writes none
        shutil.copy(bert / "vocab.txt", tmp_path / "ref")
    slow_ref = slow_class.from_pretrained(str(tmp_path / "ref"))
    assert not slow.is_fast and len(slow) == len(got)
    assert slow.convert_tokens_to_ids(["benzene", "[ION]"]) == [len(WORDS), len(WORDS) + 1]
    for text in [*TEXTS, "benzene [ION] ions"]:
        assert got(text)["input_ids"] == ref(text)["input_ids"]
        assert slow(text)["input_ids"] == slow_ref(text)["input_ids"]  # (lower-cases [ION])
    # rows: the old ones unchanged; each new one the mean of its pieces' rows, rounded once
    before, after = weights(bert), weights(tmp_path / "out")
    emb = "bert.embeddings.word_embeddings.weight"
    assert after[emb].shape[0] == len(WORDS) + 2
    assert torch.equal(after[emb][: len(WORDS)], before[emb])
    for token, row in (("benzene", len(WORDS)), ("[ION]", len(WORDS) + 1)):
        ids = old(token, add_special_tokens=False)["input_ids"]
        want = before[emb].double()[ids].mean(0).float()
        assert torch.equal(after[emb][row], want), token
        bias = before["cls.predictions.bias"].double()[ids].mean().float()
        assert torch.equal(after["cls.predictions.bias"][row], bias), token
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == len(WORDS) + 2


@pytest.mark.roundtrip
def test_the_model_loads_and_old_logits_are_unchanged(bert, tmp_path):
    import torch
    import transformers as tf

    assert cli("add-tokens", bert, tmp_path / "out", "--token", "benzene").exit_code == 0
    a = tf.BertForMaskedLM.from_pretrained(str(bert)).eval()
    b, info = tf.BertForMaskedLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert b.config.vocab_size == len(WORDS) + 1
    ids = torch.tensor([[2, 31, 32, 3]])
    with torch.no_grad():
        la, lb = a(ids).logits, b.eval()(ids).logits
    assert torch.equal(la, lb[..., : len(WORDS)])


def test_pad_to_multiple_of_and_the_other_inits(bert, tmp_path):
    import torch

    r = cli("add-tokens", bert, tmp_path / "p", "--token", "benzene", "--pad-to-multiple-of", "8")
    assert r.exit_code == 0, r.output
    before, after = weights(bert), weights(tmp_path / "p")
    emb = "bert.embeddings.word_embeddings.weight"
    rows = -(-(len(WORDS) + 1) // 8) * 8
    assert after[emb].shape[0] == rows
    mean = before[emb].double().mean(0).float()
    for row in range(len(WORDS) + 1, rows):  # padding rows: the mean of all rows
        assert torch.equal(after[emb][row], mean)
    assert cli("add-tokens", bert, tmp_path / "m", "--token", "x1", "--init", "mean").exit_code == 0
    assert torch.equal(weights(tmp_path / "m")[emb][len(WORDS)], mean)
    assert weights(tmp_path / "m")["cls.predictions.bias"][len(WORDS)] == 0
    r = cli("add-tokens", bert, tmp_path / "n", "--token", "x1", "--init", "normal", "--seed", "3")
    assert r.exit_code == 0, r.output


def test_special_tokens_a_tokens_file_the_api_and_a_recipe(bert, tmp_path):
    from transformers import AutoTokenizer

    listed = tmp_path / "tokens.txt"
    listed.write_text("<mol>\n\n</mol>\n")
    r = cli("add-tokens", bert, tmp_path / "s", "--tokens-file", listed, "--special")
    assert r.exit_code == 0, r.output
    reference(bert, tmp_path / "ref", ["<mol>", "</mol>"], special=True)
    for f in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "s" / f.name).read_bytes() == f.read_bytes(), f.name
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "s"))
    assert tok.decode(tok("<mol>")["input_ids"], skip_special_tokens=True) == ""
    res = ckptsurgeon.add_tokens(bert, tmp_path / "api", ["benzene"])
    assert res.plan.config_edits[0].new == len(WORDS) + 1
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n  - {op: add_tokens, tokens: [benzene]}\n  - {op: cast, dtype: bf16}\n"
    )
    assert cli("apply", recipe, bert, tmp_path / "rec").exit_code == 0


def test_errors_name_what_to_do(bert, model_store, tmp_path):
    r = cli("add-tokens", model_store("bert"), tmp_path / "o", "--token", "x")
    assert r.exit_code == 2
    assert "SRC has no tokenizer files (tokenizer.json, vocab.txt, ...)" in r.output
    assert "use resize-vocab to grow the matrices alone" in r.output
    r = cli("add-tokens", bert, tmp_path / "o", "--token", " ")
    assert r.exit_code == 2 and "an empty token" in r.output
    r = cli("add-tokens", bert, tmp_path / "o")
    assert r.exit_code == 2 and "no tokens given" in r.output
    short = tmp_path / "short"
    shutil.copytree(bert, short)
    config = json.loads((short / "config.json").read_text())
    (short / "vocab.txt").write_text("\n".join([*WORDS, "extra1", "extra2"]) + "\n")
    (short / "tokenizer.json").unlink(missing_ok=True)  # 4.x saves vocab.txt alone
    (short / "config.json").write_text(json.dumps(config))
    r = cli("add-tokens", short, tmp_path / "o", "--token", "x")
    assert r.exit_code == 2
    assert (
        f"the tokenizer has {len(WORDS) + 2} tokens but the embeddings have {len(WORDS)} rows"
        in (r.output)
    )
    assert not (tmp_path / "o").exists()
    tiny = tmp_path / "tiny-vocab"  # a tokenizer far smaller than the embeddings: not theirs
    shutil.copytree(bert, tiny)
    (tiny / "vocab.txt").write_text("\n".join(WORDS[:20]) + "\n")
    (tiny / "tokenizer.json").unlink(missing_ok=True)
    r = cli("add-tokens", tiny, tmp_path / "o", "--token", "x")
    assert r.exit_code == 2
    assert f"the tokenizer has 20 tokens but the embeddings have {len(WORDS)} rows" in r.output


@pytest.mark.skipif(not (REAL / "allennlp-bert-xsmall-dummy").is_dir(), reason="needs ../shared")
def test_a_real_checkpoint_that_ships_only_vocab_txt(tmp_path):
    from transformers import AutoTokenizer

    src = REAL / "allennlp-bert-xsmall-dummy"
    r = cli("add-tokens", src, tmp_path / "out", "--token", "ckptsurgeon", "--token", "benzene")
    assert r.exit_code == 0, r.output
    ref = reference(src, tmp_path / "ref", ["ckptsurgeon", "benzene"])
    got = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert len(got) == len(ref)
    for text in ["hello world", "ckptsurgeon adds benzene"]:
        assert got(text)["input_ids"] == ref(text)["input_ids"]
    rows = weights(tmp_path / "out")["embeddings.word_embeddings.weight"].shape[0]
    assert rows == len(ref)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (tied head) with a byte-level BPE tokenizer trained here."""
    import torch
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    corpus = ["the chemical benzene is an aromatic ring", "an ion in the chem lab"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])  # fmt: skip
    bpe.save(str(root / "tokenizer.json"))
    tok = tf.GPT2TokenizerFast(tokenizer_file=str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=32)
    src = root / "src"
    tf.GPT2LMHeadModel(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    return src


@pytest.mark.roundtrip
def test_gpt2_bpe_and_its_tied_head(gpt2, tmp_path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    r = cli("add-tokens", gpt2, tmp_path / "out", "--token", "benzene-ring", "--token", "<ion>")
    assert r.exit_code == 0, r.output
    ref = reference(gpt2, tmp_path / "ref", ["benzene-ring", "<ion>"])
    got = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    old = AutoTokenizer.from_pretrained(str(gpt2))
    assert len(got) == len(ref) == len(old) + 2
    for text in ["the chemical benzene-ring", "an <ion> in the lab"]:
        assert got(text)["input_ids"] == ref(text)["input_ids"]
    model, info = tf.GPT2LMHeadModel.from_pretrained(
        str(tmp_path / "out"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    emb = model.transformer.wte.weight
    assert emb.shape[0] == len(old) + 2 and model.lm_head.weight.data_ptr() == emb.data_ptr()
    before = weights(gpt2)["transformer.wte.weight"].double()
    ids = old("benzene-ring", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and torch.equal(emb[len(old)].detach(), before[ids].mean(0).float())


def test_resize_vocab_warns_and_verify_fails_when_the_tokenizer_no_longer_fits(bert, tmp_path):
    from ckptsurgeon.formats.tokenizer_files import tokenizer_length

    assert tokenizer_length(bert) == len(WORDS)
    r = cli("resize-vocab", bert, tmp_path / "small", "--size", str(len(WORDS) - 3))
    assert r.exit_code == 0, r.output
    assert (
        f"the tokenizer beside the weights has {len(WORDS)} tokens and the embeddings will have "
        f"{len(WORDS) - 3} rows: the ids no longer match; add-tokens grows both together"
    ) in r.output
    r = cli("verify", tmp_path / "small")
    assert r.exit_code == 1
    assert (
        f"FAIL  the tokenizer fits the embeddings: len(tokenizer) {len(WORDS)}, embeddings "
        f"{len(WORDS) - 3} rows"
    ) in r.output
    assert cli("add-tokens", bert, tmp_path / "grown", "--token", "benzene").exit_code == 0
    r = cli("verify", tmp_path / "grown")
    assert r.exit_code == 0 and "ok    the tokenizer fits the embeddings" in r.output, r.output


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa (MLM head tied to the embeddings, its own bias) with a byte-level BPE
    tokenizer trained here and saved by RobertaTokenizerFast (vocab.json, merges.txt, tokenizer.json)."""
    import torch
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("roberta")
    bpe = ByteLevelBPETokenizer()
    corpus = ["the chemical benzene is an aromatic ring", "an ion in the chem lab"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # fmt: skip
    bpe.save_model(str(root))
    tok = tf.RobertaTokenizerFast(str(root / "vocab.json"), str(root / "merges.txt"))
    torch.manual_seed(0)
    cfg = tf.RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=24, max_position_embeddings=40)  # fmt: skip
    model = tf.RobertaForMaskedLM(cfg)
    with torch.no_grad():
        model.lm_head.bias.normal_()
    src = root / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    return src


@pytest.mark.roundtrip
def test_roberta_bpe_head_bias_and_logits(roberta, tmp_path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    tokens = ["benzene-ring", " aromatic", "<ion>"]
    r = cli("add-tokens", roberta, tmp_path / "out", *[x for t in tokens for x in ("--token", t)])
    assert r.exit_code == 0, r.output
    ref = reference(roberta, tmp_path / "ref", tokens)
    for f in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    got = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    old = AutoTokenizer.from_pretrained(str(roberta))
    n = len(old)
    assert len(got) == len(ref) == n + 3
    assert got.convert_tokens_to_ids(tokens) == [n, n + 1, n + 2]
    for text in ["the chemical benzene-ring", "an <ion> in the lab", "aromatic ions"]:
        assert got(text)["input_ids"] == ref(text)["input_ids"]
    before, after = weights(roberta), weights(tmp_path / "out")
    emb = "roberta.embeddings.word_embeddings.weight"
    assert torch.equal(after[emb][:n], before[emb])
    for row, token in enumerate(tokens, n):
        ids = old(token, add_special_tokens=False)["input_ids"]
        assert torch.equal(after[emb][row], before[emb].double()[ids].mean(0).float()), token
        bias = before["lm_head.bias"].double()[ids].mean().float()
        assert torch.equal(after["lm_head.bias"][row], bias), token
    a = tf.RobertaForMaskedLM.from_pretrained(str(roberta)).eval()
    b, info = tf.RobertaForMaskedLM.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert b.config.vocab_size == n + 3
    assert (
        b.lm_head.decoder.weight.data_ptr()
        == b.roberta.embeddings.word_embeddings.weight.data_ptr()
    )
    ids = torch.tensor([old("the chemical ion")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b.eval()(ids).logits[..., :n])


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 whose only tokenizer file is a sentencepiece model trained here (spiece.model,
    as T5's own releases ship it), with 8 padding rows past the tokenizer as T5's 32128 rows
    for 32100 tokens."""
    import sentencepiece as spm
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("t5")
    src = root / "src"
    src.mkdir()
    corpus = ["the chemical benzene is an aromatic ring", "an ion in the chem lab",
              "translate English to German: the house is wonderful"] * 30  # fmt: skip
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(src / "spiece"), vocab_size=60,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    (src / "spiece.vocab").unlink()
    (src / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer", "extra_ids": 4}')
    n = len(tf.AutoTokenizer.from_pretrained(str(src)))
    torch.manual_seed(0)
    cfg = tf.T5Config(vocab_size=n + 8, d_model=16, d_kv=8, d_ff=24, num_layers=2,
                      num_heads=2, decoder_start_token_id=0)  # fmt: skip
    tf.T5ForConditionalGeneration(cfg).save_pretrained(src)
    return src


@pytest.mark.roundtrip
def test_t5_sentencepiece_and_its_padding_rows(t5, tmp_path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    old = AutoTokenizer.from_pretrained(str(t5))
    n = len(old)
    r = cli("add-tokens", t5, tmp_path / "out", "--token", "benzene-ring", "--token", "<ion>",
            "--pad-to-multiple-of", "8")  # fmt: skip
    assert r.exit_code == 0, r.output
    ref = reference(t5, tmp_path / "ref", ["benzene-ring", "<ion>"])
    for f in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    got = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert len(got) == len(ref) == n + 2
    assert got.convert_tokens_to_ids(["benzene-ring", "<ion>"]) == [n, n + 1]
    for text in ["translate English to German: the benzene-ring", "an <ion> in the chem lab"]:
        assert got(text)["input_ids"] == ref(text)["input_ids"]
    before, after = weights(t5), weights(tmp_path / "out")
    rows = -(-(n + 2) // 8) * 8
    for name in ("shared.weight", "lm_head.weight"):  # untied in the file, both grown
        if name not in before:
            continue
        assert after[name].shape[0] == rows
        assert torch.equal(after[name][:n], before[name][:n])
        ids = old("benzene-ring", add_special_tokens=False)["input_ids"]
        assert len(ids) > 1
        assert torch.equal(after[name][n], before[name].double()[ids].mean(0).float()), name
    a = tf.T5ForConditionalGeneration.from_pretrained(str(t5)).eval()
    b, info = tf.T5ForConditionalGeneration.from_pretrained(
        str(tmp_path / "out"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert b.config.vocab_size == rows
    enc = torch.tensor([old("the chemical ion")["input_ids"]])
    dec = torch.tensor([[0, 5, 7]])
    with torch.no_grad():
        la = a(input_ids=enc, decoder_input_ids=dec).logits
        lb = b.eval()(input_ids=enc, decoder_input_ids=dec).logits
    assert torch.equal(la[..., :n], lb[..., :n])


def test_t5_shrinking_into_its_padding_rows_is_said(t5, tmp_path):
    r = cli("add-tokens", t5, tmp_path / "out", "--token", "benzene-ring")
    assert r.exit_code == 0, r.output
    assert "the embeddings shrink from" in r.output


def test_the_tokenizer_comes_from_config_from_when_src_has_none(bert, tmp_path):
    """A training checkpoint has no tokenizer: --config-from's is the one that grows."""
    import torch

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(bert / "model.safetensors", bare)
    r = cli("add-tokens", bare, tmp_path / "o", "--token", "x")
    assert r.exit_code == 2 and "SRC has no tokenizer files" in r.output
    r = cli("add-tokens", bare, tmp_path / "out", "--token", "benzene", "--config-from", bert)
    assert r.exit_code == 0, r.output
    reference(bert, tmp_path / "ref", ["benzene"])
    for f in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    assert (
        json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == len(WORDS) + 1
    )
    emb = "bert.embeddings.word_embeddings.weight"
    same = weights(tmp_path / "out")[emb]
    direct = cli("add-tokens", bert, tmp_path / "direct", "--token", "benzene")
    assert direct.exit_code == 0 and torch.equal(same, weights(tmp_path / "direct")[emb])
