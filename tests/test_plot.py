"""diff --plot: a heatmap by layer and module kind; tests look at the picture itself."""

from __future__ import annotations

import builtins
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from test_hardening import assert_clean_error, cli

from ckptsurgeon import cast, diff, reinit
from ckptsurgeon.tools.plot import diff_grid, kind_of, write_plot


@pytest.fixture
def top_layer(model_store, tmp_path):
    src = model_store("bert")
    reinit(src, tmp_path / "re", top_layers=1)
    return diff(src, tmp_path / "re")


def test_grid_puts_the_reinitialised_layer_in_hot_cells(top_layer):
    grid = diff_grid(top_layer)
    assert grid.rows == ("embeddings", "layer 0", "layer 1", "layer 2", "layer 3", "other", "total")
    assert grid.columns[:7] == (
        "query",
        "key",
        "value",
        "attn out",
        "intermediate",
        "output",
        "LayerNorm",
    )
    for column in ("query", "key", "value", "attn out", "intermediate", "output", "LayerNorm"):
        assert grid.get("layer 3", column).value > 0.5, column
        for row in ("layer 0", "layer 1", "layer 2"):
            assert grid.get(row, column).mark == "=", (row, column)
    assert grid.get("total", "total").value == max(t.rel_l2 for t in top_layer.tensors)
    assert kind_of("transformer.h.0.mlp.c_fc.weight") == "intermediate"
    assert kind_of("model.layers.0.self_attn.o_proj.weight") == "attn out"
    assert kind_of("bert.encoder.layer.0.output.LayerNorm.bias") == "LayerNorm"


def test_png_cells_are_hot_where_layers_changed(top_layer, tmp_path):
    from matplotlib.image import imread

    centres = write_plot(top_layer, tmp_path / "d.png")
    pixels = imread(tmp_path / "d.png")

    def rgb(row, column):
        x, y = centres[(row, column)]
        return pixels[int(y) + 6, int(x) + 12][:3]  # beside the cell's label

    r, g, b = rgb("layer 3", "query")
    assert r > 0.4 and g < 0.2 and b < 0.2  # deep red: a re-initialisation
    r, g, b = rgb("layer 0", "query")
    assert abs(r - g) < 0.02 and abs(g - b) < 0.02 and r > 0.85  # grey: identical


def test_svg_and_html_carry_the_labels(top_layer, tmp_path):
    write_plot(top_layer, tmp_path / "d.svg")
    texts = [
        "".join(el.itertext())
        for el in ET.parse(tmp_path / "d.svg").iter()
        if el.tag.endswith("text")
    ]
    assert "layer 3" in texts and "query" in texts and texts.count("=") >= 18
    assert any(t.startswith("1.") for t in texts)
    write_plot(top_layer, tmp_path / "d.html")

    seen: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            seen.append(tag)

    parser = Tags()
    parser.feed((tmp_path / "d.html").read_text())
    assert {"html", "body", "svg"} <= set(seen)


def test_dtype_mismatches_are_marked(model_store, tmp_path):
    src = model_store("bert")
    cast(src, tmp_path / "bf16", "bf16", patterns="bert.encoder.layer.0.*")
    grid = diff_grid(diff(src, tmp_path / "bf16"))
    assert grid.get("layer 0", "query").mark == "dtype"
    assert grid.get("layer 1", "query").mark == "="
    code, _, err, _ = cli("diff", src, tmp_path / "bf16", "--plot", tmp_path / "p.svg")
    assert code == 1 and (tmp_path / "p.svg").read_text().count(">dtype") >= 1


def test_plot_errors(model_store, tmp_path, monkeypatch):
    src = model_store("bert")
    code, _, err, _ = cli("diff", src, src, "--plot", tmp_path / "p.jpg")
    assert_clean_error(
        code, err, "cannot tell the picture format from 'p.jpg'", "end FILE in .png, .svg or .html"
    )
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err, _ = cli("diff", src, src, "--plot", tmp_path / "p.png")
    assert err.strip() == (
        f"Error: diff --plot needs matplotlib, which is not installed ({tmp_path / 'p.png'}): "
        "pip install 'ckptsurgeon[plot]'"
    )
    assert code == 2 and not (tmp_path / "p.png").exists()


def test_each_stack_gets_its_own_labelled_rows(tmp_path):
    """T5's decoder (and CLIP's vision tower) were collapsed into one 'other' row: every stack
    now has a group of rows labelled by the stack, and a change shows in the right one."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(
        tf.T5Config(d_model=32, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=8, vocab_size=99)
    )  # fmt: skip
    t5.save_pretrained(tmp_path / "t5")
    reinit(tmp_path / "t5", tmp_path / "re", "decoder.block.2.*")
    grid = diff_grid(diff(tmp_path / "t5", tmp_path / "re"))
    assert grid.rows == (
        "embeddings", "decoder.block 0", "decoder.block 1", "decoder.block 2",
        "encoder.block 0", "encoder.block 1", "other", "total",
    )  # fmt: skip
    assert grid.get("decoder.block 2", "total").value > 0.5
    for row in grid.rows[1:6]:
        if row != "decoder.block 2":
            assert grid.get(row, "total").mark == "=", row
    assert grid.get("other", "total").mark == "="  # the final layer norms only
    code, _, err, _ = cli("diff", tmp_path / "t5", tmp_path / "re", "--plot", tmp_path / "p.svg")
    assert code == 1, err
    labels = {el.text for el in ET.parse(tmp_path / "p.svg").iter() if el.text}
    assert {"decoder.block 2", "encoder.block 1"} <= {label.strip() for label in labels}
