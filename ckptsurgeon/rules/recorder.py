"""What the model's own init does to one tensor, named as a rule (``--rules model``'s labels).

:class:`RuleRecorder` watches the init functions and in-place tensor methods that write the
tensor and names the rule they amount to (``normal(0, 0.02)``, ``trunc_normal(...)``, ``ones``).
In dry mode the calls are recorded and not run: the rule is found without drawing a value, and
the tool's own generators stream it. Where the calls cannot name a rule, torch draws it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

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


@functools.cache
def _signature(function: Any) -> inspect.Signature:
    """An init function's signature, worked out once per process (not once per tensor)."""
    return inspect.signature(function)


class RuleRecorder:
    """Records what the model's init does to one tensor and names the rule it amounts to:
    ``normal(0, 0.02)``, ``trunc_normal(0, 0.02, -0.04, 0.04)``, ``ones``, ``zeros``,
    ``constant(0.5)``, with ``, row 0 zeroed`` for a padding row.

    Calls of the init functions (``torch.nn.init`` and transformers' ``initialization``,
    whichever the model's code calls) are seen by wrapping those functions for the duration;
    in-place tensor methods (``normal_``, ``fill_``, ``zero_``, ``mul_``) by a
    ``TorchFunctionMode``. What cannot be named (an op it does not know) leaves the rule to
    :func:`describe`, which reads it off the values."""

    def __init__(self, target: Any, dry: bool = False) -> None:
        self.target = target
        # dry: the init calls that write the target are recorded and not run, so nothing is
        # drawn and the target's pages are never touched (a 262 MB lm_head costs nothing)
        self.dry = dry
        self.events: list[tuple[str, tuple[float, ...], int | None]] = []  # kind, args, row
        self.unknown = False
        self.depth = 0
        self.patched: list[tuple[Any, str, Any]] = []
        self.mode: Any = None

    def __enter__(self) -> RuleRecorder:
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
                    name = getattr(func, "__name__", "")
                    if recorder._method(name, args, kwargs) and recorder.dry:
                        return args[0]  # recorded, not run
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
        signature = _signature(original)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.depth == 0:
                try:
                    bound = signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    if self._function(fname, dict(bound.arguments)) and self.dry:
                        return bound.arguments.get("tensor")  # recorded, not run
                except TypeError:
                    self.unknown = True
            self.depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1

        return wrapper

    def _function(self, fname: str, arguments: dict[str, Any]) -> bool:
        """Record an init function's call; True when it writes the target."""
        where = self._where(arguments.get("tensor"))
        if where is None:
            return False
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
        return True

    def _method(self, name: str, args: Any, kwargs: dict[str, Any]) -> bool:
        """Record an in-place tensor method's call; True when it writes the target."""
        if not name.endswith("_") or name.startswith("__") or not args:
            return False  # not an in-place method: it writes nothing into the target
        where = self._where(args[0])
        if where is None:
            return False
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
        return True

    def _event(self, kind: str, values: tuple[float, ...], whole: bool, row: int | None) -> None:
        if not whole and (row is None or kind != "constant"):
            self.unknown = True
        self.events.append((kind, values, None if whole else row))

    def spec(self) -> tuple[str, tuple[float, ...], tuple[tuple[int, float], ...], str] | None:
        """The rule as data (kind, arguments, constant rows, its name), or None when the calls
        cannot be named (then the values must be drawn by torch)."""
        if self.unknown:
            return None
        named = self._name()
        if named is None:
            return None
        return named[0], named[1], named[3], named[2]

    def _name(
        self,
    ) -> tuple[str, tuple[float, ...], str, tuple[tuple[int, float], ...]] | None:
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
        return kind, args, text, tuple(sorted(rows.items()))
