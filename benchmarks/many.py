"""Many checkpoints in: `average` and `merge-lora` against what they cost in bytes moved, and
against the scripts users run today.

    python benchmarks/many.py            # builds ~13 GB of inputs once (cached), then times
    python benchmarks/many.py --reps 5

- `average` of three 2.2 GB fp32 decoder checkpoints (different values), paired with
  `cat` of the three inputs to /dev/null + `cp` + fsync of one input (reading every input once
  and writing one output is the least any average can do). Targets: within 1.5x, peak RSS under
  400 MiB.
- `merge-lora` of a rank-16 adapter on every linear layer (q, k, v, o, gate, up, down; its
  adapter_config.json written by PEFT's LoraConfig) into the 6.3 GB bf16 Llama-shaped checkpoint
  of run.py, paired with `cp` + fsync of its output. Targets: within 1.5x, peak RSS under
  500 MiB. Beside it, once: PEFT's `PeftModel.from_pretrained(...).merge_and_unload()` +
  `save_pretrained`.

Needs peft (the test extra) and about 30 GB of free disk.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    CACHE,
    CKPT,
    LLAMA_6GB,
    OUT,
    PY,
    Job,
    Report,
    bench,
    build,
    build_decoder_6gb,
    decoder_specs,
    paired,
    suite_main,
    warm,
)

SMALL = {**LLAMA_6GB, "num_hidden_layers": 8, "hidden_size": 2048, "intermediate_size": 5632}
SMALL["num_attention_heads"] = SMALL["num_key_value_heads"] = 16


def inputs_to_average() -> list[Path]:
    paths = []
    for i in range(3):
        path = CACHE / f"decoder-2gb-fp32-{i}"
        specs = decoder_specs(2048, 8, 5632, 32000)
        build(path, specs, "F32", SMALL, 10**11, seed=1000 + i)
        paths.append(path)
    return paths


def base_and_adapter() -> tuple[Path, Path]:
    base = build_decoder_6gb()
    adapter = CACHE / "lora-r16-all-linear"
    if (adapter / "adapter_model.safetensors").exists():
        return base, adapter
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    LoraConfig(
        r=16, lora_alpha=32, target_modules=targets, base_model_name_or_path=str(base)
    ).save_pretrained(str(adapter))
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in decoder_specs(3072, 26, 8192, 32000):
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in targets:
            continue
        out, inp = shape
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(16, inp, generator=gen) * 0.01
        tensors[f"{key}.lora_B.weight"] = torch.randn(out, 16, generator=gen) * 0.01
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    return base, adapter


PEFT_MERGE = """
import sys, torch
from transformers import LlamaForCausalLM
from peft import PeftModel
model = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, sys.argv[2]).merge_and_unload()
model.save_pretrained(sys.argv[3])
"""


def suite(report: Report, reps: int) -> None:
    srcs = inputs_to_average()
    for s in srcs:
        warm(s)
    files = " ".join(shlex.quote(str(s / "model.safetensors")) for s in srcs)
    first = shlex.quote(str(srcs[0]))
    ref: Job = (
        f"cat {files} > /dev/null && cp -r {first} {OUT}/cp && sync {OUT}/cp/* {OUT}/cp",
        True,
    )
    job: Job = ([*CKPT, "average", *map(str, srcs), str(OUT / "soup"), "-q"], False)
    res = paired({"average": job}, ref, reps)
    report.add("3 x 2.2GB fp32", "cat 3 inputs + cp+sync of one", res["reference"])
    ratio = res["average"].ratio
    report.add("3 x 2.2GB fp32", "ckptsurgeon average", res["average"], f"{ratio:.2f}x")
    report.target("average within 1.5x of cat 3 + cp+sync 1", ratio <= 1.5, f"{ratio:.2f}x")
    rss = max(res["average"].rss)
    report.target("average peak RSS under 400 MiB", rss < 400, f"{rss:.0f} MiB")
    report.note(f"average CPU: {res['average'].cpu_use()}")

    base, adapter = base_and_adapter()
    warm(base)
    warm(adapter)
    merged = CACHE / "merged-6gb"  # its output, for the reference copy
    if not merged.exists():
        subprocess.run(
            [*CKPT, "merge-lora", str(base), str(adapter), str(merged), "-q"], check=True
        )
    warm(merged)
    ref = (f"cp -r {shlex.quote(str(merged))} {OUT}/cp && sync {OUT}/cp/* {OUT}/cp", True)
    job = ([*CKPT, "merge-lora", str(base), str(adapter), str(OUT / "m"), "-q"], False)
    res = paired({"merge-lora": job}, ref, reps)
    report.add("6GB bf16 + r16 LoRA", "cp+sync of its output", res["reference"])
    ratio = res["merge-lora"].ratio
    report.add("6GB bf16 + r16 LoRA", "ckptsurgeon merge-lora", res["merge-lora"], f"{ratio:.2f}x")
    report.target("merge-lora within 1.5x of cp+sync of its output", ratio <= 1.5, f"{ratio:.2f}x")
    rss = max(res["merge-lora"].rss)
    report.target("merge-lora peak RSS under 500 MiB", rss < 500, f"{rss:.0f} MiB")
    report.note(f"merge-lora CPU: {res['merge-lora'].cpu_use()}")
    report.note(f"cp+sync of its output CPU: {res['reference'].cpu_use()}")
    theirs: Job = ([PY, "-c", PEFT_MERGE, str(base), str(adapter), str(OUT / "peft")], False)
    label = "PEFT merge_and_unload + save_pretrained"
    report.add("6GB bf16 + r16 LoRA", label, bench({label: theirs}, 1)[label])


if __name__ == "__main__":
    suite_main(suite, __doc__)
