"""``reinit --rules model``: each selected tensor initialised by the architecture's own code.

The model class (config.json's ``architectures``, else the ``model_type``'s base model) is built
by the installed transformers on the ``meta`` device: no memory, no values. For one tensor at a
time, its parameter is swapped for a real CPU tensor, torch's generator is seeded from (seed,
tensor name), and the model's ``_init_weights`` runs on the module that owns it and then on each
ancestor up to the model itself, leaf first, as ``nn.Module.apply`` orders them. So rules that a
parent module applies (GPT-2 scales every ``c_proj.weight`` by 1/sqrt(2 n_layer) while
initialising its attention and MLP blocks) come out right; everything else stays on ``meta``,
where init calls cost nothing. Memory is bounded by the largest selected tensor.

Values depend on (seed, tensor name) and the versions of transformers and torch, which the
output's metadata records.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InitRuleError, SelectionError, first_line
from .bert import Rule
from .recorder import RuleRecorder

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# model types whose _init_weights is BERT's: --rules auto keeps the torch-free rules for them
BERT_FAMILY = {
    "bert",
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "distilbert",
    "electra",
    "roberta-prelayernorm",
    "data2vec-text",
    "xmod",
    "longformer",
    "ernie",
    "mpnet",
}


# The class-name prefix of each BERT-family model type, longest first (XLMRobertaXL before
# XLMRoberta): a config.json without model_type is recognised by its architectures, torch-free.
_BERT_CLASSES = {
    "XLMRobertaXL": "xlm-roberta-xl",
    "RobertaPreLayerNorm": "roberta-prelayernorm",
    "XLMRoberta": "xlm-roberta",
    "Data2VecText": "data2vec-text",
    "Longformer": "longformer",
    "Camembert": "camembert",
    "DistilBert": "distilbert",
    "Electra": "electra",
    "Roberta": "roberta",
    "Ernie": "ernie",
    "MPNet": "mpnet",
    "Xmod": "xmod",
    "Bert": "bert",
}
_BERT_CLASS_RE = re.compile(
    "^(" + "|".join(_BERT_CLASSES) + r")(?:Model|LMHeadModel|For[A-Z][A-Za-z]*)$"
)


def architecture(config: dict[str, Any] | None) -> str | None:
    """The first class config.json's ``architectures`` names, if any."""
    names = (config or {}).get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    return None


def choose_rules(rules: str, config: dict[str, Any] | None) -> str:
    """``bert`` or ``model`` for ``--rules auto``: BERT's for its family (and for a checkpoint
    with no config.json, or one that names neither a model_type nor an architecture), the
    model's own for every other model. Without ``model_type``, the family is the one of the
    class ``architectures`` names (fastNLP's GPT-2 configs have only that)."""
    if rules != "auto":
        return rules
    model_type = str((config or {}).get("model_type") or "")
    if model_type:
        return "bert" if model_type in BERT_FAMILY else "model"
    arch = architecture(config)
    if arch is None or _BERT_CLASS_RE.match(arch):
        return "bert"
    return "model"


def _model_type_of_class(tf: Any, name: str, where: str) -> str:
    """The model_type of the transformers class ``name`` (config.json without model_type)."""
    cls = getattr(tf, name, None)
    model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise SelectionError(
            f"config.json has no model_type and transformers {tf.__version__} has no model "
            f"class {name!r} (its architectures)",
            where,
            'add "model_type" to config.json, or pass --rules bert',
        )
    return model_type


@dataclass
class ModelInit:
    """The meta-device model whose own init fills tensors."""

    model: Any
    class_name: str
    versions: dict[str, str]

    @classmethod
    def build(cls, config: dict[str, Any] | None, where: str) -> ModelInit:
        try:
            import torch
            import transformers as tf
        except ImportError:
            raise SelectionError(
                "--rules model needs transformers (and torch), which are not installed",
                where,
                "pip install transformers, or pass --rules bert",
            ) from None
        cfg = dict(config or {})
        model_type = cfg.get("model_type")
        if not model_type:
            arch = architecture(cfg)
            if arch is None:
                raise SelectionError(
                    "--rules model needs config.json's model_type or architectures",
                    where,
                    "pass --rules bert",
                )
            model_type = _model_type_of_class(tf, arch, where)
        try:
            tf_config = tf.AutoConfig.for_model(
                model_type, **{k: v for k, v in cfg.items() if k != "model_type"}
            )
        except Exception as exc:
            raise SelectionError(
                f"transformers {tf.__version__} cannot build a config for {model_type!r} "
                f"({first_line(exc)})",
                where,
                "pass --rules bert",
            ) from None
        arch = architecture(cfg)
        model_class: Any = getattr(tf, arch, None) if arch is not None else None
        if model_class is None:
            model_class = tf.AutoModel._model_mapping[type(tf_config)]
        try:
            with torch.device("meta"):
                model = model_class(tf_config)
        except Exception as exc:
            raise SelectionError(
                f"cannot build {model_class.__name__} from config.json ({first_line(exc)})",
                where,
                "pass --rules bert",
            ) from None
        versions = {"transformers": tf.__version__, "torch": torch.__version__.split("+")[0]}
        return cls(model, model_class.__name__, versions)

    def _locate(self, name: str) -> tuple[str, Any, str]:
        """The model's own name for a checkpoint tensor, its owning module and leaf name."""
        own = dict(self.model.named_parameters(remove_duplicate=False))
        own.update(dict(self.model.named_buffers(remove_duplicate=False)))
        prefix = getattr(self.model, "base_model_prefix", "")
        candidates = [name]
        if prefix:
            candidates += [f"{prefix}.{name}", name.removeprefix(prefix + ".")]
        for candidate in candidates:
            if candidate in own:
                path, _, leaf = candidate.rpartition(".")
                return candidate, self.model.get_submodule(path), leaf
        raise InitRuleError(
            f"{self.class_name} has no tensor {name!r}",
            name,
            "check config.json's architectures, or pass --rules bert",
        )

    def values(self, name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
        """Float32 values of tensor ``name`` drawn by the model's own init with torch (the
        executor, for rules :meth:`spec` cannot name)."""
        values = self._draw(name, shape, seed, record=False)[0]
        assert values is not None
        return values

    def spec(self, name: str, shape: tuple[int, ...], seed: int) -> Rule | None:
        """The rule the model's own init applies to ``name``, as a rule the tool's streaming
        generators draw (``normal(0, 0.00707)``, ``trunc_normal(...)``, ``ones``...): its init
        runs with the calls that write the tensor recorded and not run, so nothing is drawn
        and no memory is touched. None when the calls cannot be named (xavier, orthogonal,
        arithmetic on values): then the tensor is drawn by torch (:meth:`values`)."""
        found = self._draw(name, shape, seed, record=True)[1]
        if found is None:
            return None
        kind, args, rows, label = found
        if kind == "normal":
            return Rule("normal", std=abs(args[1]), mean=args[0], rows=rows, label=label)
        if kind == "trunc_normal":
            mean, std, low, high = args
            return Rule("trunc_normal", std=std, mean=mean, low=low, high=high, rows=rows,
                        label=label)  # fmt: skip
        if kind == "uniform":
            return Rule("uniform", low=args[0], high=args[1], rows=rows, label=label)
        if kind == "constant":
            return Rule("constant", value=args[0], rows=rows, label=label)
        return None  # pragma: no cover - the recorder names no other kind

    def _draw(
        self, name: str, shape: tuple[int, ...], seed: int, *, record: bool
    ) -> tuple[np.ndarray | None, Any]:
        import contextlib

        import torch

        full, owner, leaf = self._locate(name)
        current = getattr(owner, leaf)
        if tuple(current.shape) != tuple(shape):
            raise InitRuleError(
                f"{self.class_name} builds {name} as {list(current.shape)}, the checkpoint has "
                f"{list(shape)}",
                name,
                "check that config.json belongs to these weights",
            )
        real = torch.empty(shape, dtype=torch.float32)
        is_param = leaf in owner._parameters
        if is_param:
            owner._parameters[leaf] = torch.nn.Parameter(real, requires_grad=False)
        else:
            owner._buffers[leaf] = real
        try:
            torch.manual_seed(_seed(seed, name))
            parts = full.split(".")[:-1]
            chain = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
            recorder = RuleRecorder(real, dry=True) if record else None
            with torch.no_grad(), recorder or contextlib.nullcontext():
                for path in chain:  # the owner first, then each ancestor, the model last
                    self.model._init_weights(self.model.get_submodule(path))
            out = None if record else getattr(owner, leaf).detach().float().numpy().copy()
        finally:
            if is_param:
                owner._parameters[leaf] = current
            else:
                owner._buffers[leaf] = current
        if recorder is None:
            return out, None
        if not recorder.events and not recorder.unknown:
            raise InitRuleError(
                f"{self.class_name}'s own init does not set {name} (its value is fixed when the "
                "model is built, e.g. from config.json)",
                name,
                "leave it out of the selection (-x), or pass --rules bert",
            )
        return None, recorder.spec()


def _seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
