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

from .errors import InitRuleError, SelectionError

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
                f"({_first(exc)})",
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
                f"cannot build {model_class.__name__} from config.json ({_first(exc)})",
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
        """Float32 values of tensor ``name`` as the model's own init makes them."""
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
            with torch.no_grad(), _RuleRecorder(real) as recorder:
                for path in chain:  # the owner first, then each ancestor, the model last
                    self.model._init_weights(self.model.get_submodule(path))
            out = getattr(owner, leaf).detach().float().numpy().copy()
        finally:
            if is_param:
                owner._parameters[leaf] = current
            else:
                owner._buffers[leaf] = current
        if not recorder.events and not recorder.unknown:
            raise InitRuleError(
                f"{self.class_name}'s own init does not set {name} (its value is fixed when the "
                "model is built, e.g. from config.json)",
                name,
                "leave it out of the selection (-x), or pass --rules bert",
            )
        self.last_rule = recorder.rule(out)
        return out

    last_rule: str = ""


# The init functions whose calls name a rule, in torch.nn.init and transformers.initialization
_INIT_FUNCTIONS = (
    "normal_",
    "trunc_normal_",
    "uniform_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "eye_",
)
_DEFAULTS = {"normal_": (0.0, 1.0), "trunc_normal_": (0.0, 1.0, -2.0, 2.0), "uniform_": (0.0, 1.0)}


class _RuleRecorder:
    """Records what the model's init does to one tensor and names the rule it amounts to:
    ``normal(0, 0.02)``, ``trunc_normal(0, 0.02, -0.04, 0.04)``, ``ones``, ``zeros``,
    ``constant(0.5)``, with ``, row 0 zeroed`` for a padding row.

    Calls of the init functions (``torch.nn.init`` and transformers' ``initialization``,
    whichever the model's code calls) are seen by wrapping those functions for the duration;
    in-place tensor methods (``normal_``, ``fill_``, ``zero_``, ``mul_``) by a
    ``TorchFunctionMode``. What cannot be named (an op it does not know) leaves the rule to
    :func:`describe`, which reads it off the values."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.events: list[tuple[str, tuple[float, ...], int | None]] = []  # kind, args, row
        self.unknown = False
        self.depth = 0
        self.patched: list[tuple[Any, str, Any]] = []
        self.mode: Any = None

    def __enter__(self) -> _RuleRecorder:
        import torch
        from torch.overrides import TorchFunctionMode

        modules = [torch.nn.init]
        try:
            import transformers.initialization as hf_init

            modules.append(hf_init)
        except ImportError:  # transformers 4.x calls torch.nn.init directly
            pass
        for module in modules:
            for fname in _INIT_FUNCTIONS:
                original = getattr(module, fname, None)
                if original is not None:
                    self.patched.append((module, fname, original))
                    setattr(module, fname, self._wrap(fname, original))
        recorder = self

        class Mode(TorchFunctionMode):
            def __torch_function__(
                self, func: Any, types: Any, args: Any = (), kwargs: Any = None
            ) -> Any:
                kwargs = kwargs or {}
                if recorder.depth == 0:
                    recorder._method(getattr(func, "__name__", ""), args, kwargs)
                return func(*args, **kwargs)

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)
        for module, fname, original in reversed(self.patched):
            setattr(module, fname, original)

    def _where(self, tensor: Any) -> tuple[bool, int | None] | None:
        """(covers the whole target, the row it is) for a tensor on the target's storage."""
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return None
        try:
            if tensor.untyped_storage().data_ptr() != self.target.untyped_storage().data_ptr():
                return None
        except (RuntimeError, NotImplementedError):
            return None
        if tensor.numel() == self.target.numel():
            return True, None
        row_bytes = self.target[0].numel() * self.target.element_size() if self.target.ndim else 0
        offset = tensor.data_ptr() - self.target.data_ptr()
        if self.target.ndim >= 2 and tensor.numel() == self.target[0].numel() and row_bytes:
            return False, offset // row_bytes
        return False, None

    def _wrap(self, fname: str, original: Any) -> Any:
        import inspect

        signature = inspect.signature(original)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.depth == 0:
                try:
                    bound = signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    self._function(fname, dict(bound.arguments))
                except TypeError:
                    self.unknown = True
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1

        return wrapper

    def _function(self, fname: str, arguments: dict[str, Any]) -> None:
        where = self._where(arguments.get("tensor"))
        if where is None:
            return
        whole, row = where
        if fname in ("normal_", "uniform_"):
            names = ("mean", "std") if fname == "normal_" else ("a", "b")
            self._event(fname[:-1], tuple(float(arguments[k]) for k in names), whole, row)
        elif fname == "trunc_normal_":
            values = tuple(float(arguments[k]) for k in ("mean", "std", "a", "b"))
            self._event("trunc_normal", values, whole, row)
        elif fname in ("constant_", "ones_", "zeros_"):
            value = {"ones_": 1.0, "zeros_": 0.0}.get(fname, arguments.get("val"))
            self._event("constant", (float(value),), whole, row)  # type: ignore[arg-type]
        else:  # xavier, kaiming, orthogonal, eye: named by the values instead
            self.unknown = True

    def _method(self, name: str, args: Any, kwargs: dict[str, Any]) -> None:
        if not name.endswith("_") or name.startswith("__") or not args:
            return  # not an in-place method: it writes nothing into the target
        where = self._where(args[0])
        if where is None:
            return
        whole, row = where
        rest = list(args[1:])
        if name == "normal_":
            mean = kwargs.get("mean", rest[0] if rest else 0.0)
            std = kwargs.get("std", rest[1] if len(rest) > 1 else 1.0)
            self._event("normal", (float(mean), float(std)), whole, row)
        elif name == "uniform_":
            lo = kwargs.get("from", rest[0] if rest else 0.0)
            hi = kwargs.get("to", rest[1] if len(rest) > 1 else 1.0)
            self._event("uniform", (float(lo), float(hi)), whole, row)
        elif name in ("fill_", "zero_"):
            value = rest[0] if rest else kwargs.get("value", 0.0)
            try:
                self._event("constant", (float(value),), whole, row)
            except (TypeError, ValueError):
                self.unknown = True
        elif name in ("mul_", "div_") and rest and isinstance(rest[0], int | float):
            self._event("scale", (float(rest[0]) if name == "mul_" else 1 / rest[0],), whole, row)
        else:
            self.unknown = True

    def _event(self, kind: str, values: tuple[float, ...], whole: bool, row: int | None) -> None:
        if not whole and (row is None or kind != "constant"):
            self.unknown = True
        self.events.append((kind, values, None if whole else row))

    def rule(self, values: np.ndarray) -> str:
        """The rule's name, checked against the values it produced (else read off them)."""
        named = None if self.unknown else self._name()
        if named is None or not _consistent(named[0], named[1], values):
            return describe(values)
        return named[2]

    def _name(self) -> tuple[str, tuple[float, ...], str] | None:
        kind: str = ""
        args: tuple[float, ...] = ()
        rows: dict[int, float] = {}
        for event_kind, values, row in self.events:
            if row is not None:
                rows[row] = values[0]
            elif event_kind == "scale":
                if kind not in ("normal", "constant"):
                    return None
                c = values[0]
                args = (args[0] * c, abs(args[1]) * c) if kind == "normal" else (args[0] * c,)
            else:
                kind, args, rows = event_kind, values, {}
        if not kind:
            return None
        if kind == "constant":
            v = args[0]
            text = "ones" if v == 1 else "zeros" if v == 0 else f"constant({v:g})"
        else:
            text = f"{kind}(" + ", ".join(f"{x:.3g}" for x in args) + ")"
        for row, v in sorted(rows.items()):
            text += f", row {row} " + ("zeroed" if v == 0 else f"set to {v:g}")
        return kind, args, text


def _consistent(kind: str, args: tuple[float, ...], values: np.ndarray) -> bool:
    """A sanity check of a named rule against what it drew (a wrong name is worse than none)."""
    import numpy as np

    flat = values.reshape(-1)
    if flat.size == 0:
        return True
    if kind == "constant":
        return True  # rows set apart from the constant are named in the text
    if kind == "uniform":
        return bool(np.all((flat >= args[0]) & (flat <= args[1])))
    if kind == "trunc_normal":
        return bool(np.all((flat >= args[2]) & (flat <= args[3])))
    return kind == "normal" and (args[1] > 0 or bool(np.all(flat == args[0])))


def describe(values: np.ndarray) -> str:
    """What a rule produced, for --dry-run: ones, zeros, a constant, or the distribution."""
    import numpy as np

    flat = values.reshape(-1)
    if flat.size == 0:
        return "empty"
    if np.all(flat == flat[0]):
        v = float(flat[0])
        return "ones" if v == 1 else "zeros" if v == 0 else f"constant({v:g})"
    text = f"{float(flat.mean()):.2g}, {float(flat.std()):.3g}"
    zero_rows = (
        [i for i in range(values.shape[0]) if not values[i].any()] if values.ndim == 2 else []
    )
    bound = float(np.abs(flat).max())
    kind = "trunc_normal" if bound <= 3.05 * float(flat.std()) and flat.size >= 1000 else "normal"
    text = f"{kind}({text}" + (f", |x|<={bound:.3g})" if kind == "trunc_normal" else ")")
    if zero_rows and len(zero_rows) <= 3:
        text += ", row " + ",".join(map(str, zero_rows)) + " zeroed"
    return "model init: " + text


def _seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _first(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]
