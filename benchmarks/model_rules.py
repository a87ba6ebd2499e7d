"""`--rules model` on a large model: what it costs beyond `--rules bert`.

    python benchmarks/model_rules.py            # builds a ~5 GB checkpoint once (cached)
    python benchmarks/model_rules.py --reps 5

A TinyLlama-shaped fp32 decoder (hidden 2048, 22 layers, MLP 5632, vocabulary 32000, a 262 MB
untied lm_head; attention without grouped keys, so ~5.0 GB), page cache warm, whole processes:

- ``reinit --top-layers 8 --rules model`` paired with the same job under ``--rules bert``
  followed by importing transformers' Llama code (the part of the model's rules no design can
  skip). Target: within 1.15x.
- ``reinit --top-layers 8 --rules model --dry-run`` paired with that import alone. Target:
  within 0.5 s of it.
- ``reinit -p lm_head.weight --rules model``: peak RSS under 600 MiB.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    CACHE,
    CKPT,
    OUT,
    PY,
    Job,
    Report,
    bench,
    build,
    decoder_specs,
    paired,
    suite_main,
    warm,
)

TINYLLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 22,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
IMPORT = "import torch, transformers.models.llama.modeling_llama"


def suite(report: Report, reps: int) -> None:
    src = CACHE / "tinyllama-fp32"
    build(src, decoder_specs(2048, 22, 5632, 32000), "F32", TINYLLAMA, 10**11)
    warm(src)
    label = "TinyLlama-shaped fp32 5GB"
    top8 = [str(src), "--top-layers", "8", "-q"]
    model: Job = ([*CKPT, "reinit", top8[0], str(OUT / "m"), *top8[1:], "--rules", "model"], False)
    bert_cmd = " ".join(
        shlex.quote(a)
        for a in [
            *CKPT,
            "reinit",
            top8[0],
            str(OUT / "b"),
            *top8[1:],
            "--rules",
            "bert",
        ]
    )
    reference: Job = (f"{bert_cmd} && {shlex.quote(PY)} -c {shlex.quote(IMPORT)}", True)
    res = paired({"model": model}, reference, reps)
    report.add(label, "reinit top8 --rules bert + import llama code", res["reference"])
    ratio = res["model"].ratio
    report.add(label, "reinit top8 --rules model", res["model"], f"{ratio:.2f}x")
    report.target("--rules model within 1.15x of --rules bert + the import", ratio <= 1.15,
                  f"{ratio:.2f}x")  # fmt: skip
    dry: Job = ([*CKPT, "reinit", top8[0], str(OUT / "d"), *top8[1:], "--rules", "model",
                 "--dry-run"], False)  # fmt: skip
    imp: Job = ([PY, "-c", IMPORT], False)
    res = paired({"dry": dry}, imp, reps)
    report.add(label, "import torch + llama code", res["reference"])
    extra = res["dry"].median - res["reference"].median
    report.add(label, "reinit top8 --rules model --dry-run", res["dry"], f"+{extra:.2f} s")
    report.target("--dry-run within 0.5 s of the import", extra <= 0.5, f"+{extra:.2f} s")
    head: Job = ([*CKPT, "reinit", str(src), str(OUT / "h"), "-p", "lm_head.weight", "--rules",
                  "model", "-q"], False)  # fmt: skip
    runs = bench({"lm_head": head}, max(1, reps // 2))["lm_head"]
    report.add(label, "reinit -p lm_head.weight --rules model", runs)
    rss = max(runs.rss)
    report.target("--rules model peak RSS under 600 MiB (262 MB lm_head)", rss < 600,
                  f"{rss:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    suite_main(suite, __doc__)
