"""A GPU's device rules checked on a CPU-only machine: while `FakeCuda` is active, tensors put on
"cuda" are CPU tensors marked as on the GPU (their `.device` says cuda), the mark follows every
torch operation, and each operation a real GPU would refuse is recorded with the line of
reportgen that made it:

* an operation between a GPU tensor and a CPU tensor of one or more dimensions (a CPU scalar
  tensor, like a Python number, is allowed);
* reading a CPU tensor at GPU indices, or writing CPU values of one or more dimensions into a GPU
  tensor at index tensors (reading a GPU tensor at CPU indices and copying into a slice are
  allowed);
* `.numpy()` of a GPU tensor, and a CPU random generator driving a random op on the GPU.

So `--device cuda` runs here with its placement checked, though not CUDA's kernels or rounding
(tests/test_cuda.py runs those where a GPU exists). `torch.cuda.is_available()` says True while
it is active.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

GPU = torch.device("cuda")
CPU = torch.device("cpu")
SOURCE = str(Path(__file__).resolve().parents[1] / "reportgen")
MARK = "_on_fake_gpu"


def on_gpu(t) -> bool:
    return isinstance(t, torch.Tensor) and t.__dict__.get(MARK, False)


def _mark(x, gpu: bool):
    if isinstance(x, torch.Tensor):
        setattr(x, MARK, gpu)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _mark(y, gpu)
    return x


def _tensors(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, out)
    return out


def _gpu_device(d) -> bool:
    return (isinstance(d, torch.device) and d.type == "cuda") or (isinstance(d, str) and d.startswith("cuda")) \
        or (isinstance(d, int) and not isinstance(d, bool))


def _advanced(index) -> bool:
    """Whether an index holds an index tensor or list (index_put_, not a slice copy)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) or (isinstance(i, torch.Tensor) and (i.dim() > 0 or i.dtype == torch.bool))
               or type(i).__module__ == "numpy" for i in items)


def _name(func) -> str:
    name = getattr(func, "__name__", repr(func))
    owner = getattr(func, "__self__", None)
    return f"{getattr(owner, '__name__', owner)}.{name}" if name in ("__get__", "__set__") and owner is not None else name


class FakeCuda(TorchFunctionMode):
    """The mode; `violations` lists what a GPU would have refused, with where reportgen did it."""

    def __init__(self):
        super().__init__()
        self.violations: list[str] = []
        self._available = mock.patch("torch.cuda.is_available", return_value=True)

    def __enter__(self):
        self._available.start()
        return super().__enter__()

    def __exit__(self, *exc):
        self._available.stop()
        return super().__exit__(*exc)

    def _refuse(self, what: str, tensors) -> None:
        shapes = ", ".join(f"{'gpu' if on_gpu(t) else 'cpu'}{list(t.shape)}" for t in tensors)
        frames = [f for f in traceback.extract_stack() if f.filename.startswith(SOURCE)]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"
        self.violations.append(f"{what} ({shapes}) at {where}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        if name == "device.__get__":
            return GPU if on_gpu(args[0]) else func(*args)
        if name == "is_cuda.__get__":
            return on_gpu(args[0])
        if name == "grad.__get__":  # autograd makes gradients on their tensor's device
            grad = func(*args)
            return grad if grad is None else _mark(grad, on_gpu(args[0]))
        if name == "data.__set__":  # Module.to swaps a parameter's data and keeps the Parameter
            func(*args)
            return _mark(args[0], on_gpu(args[1]))
        if name in ("numpy", "__array__"):
            if on_gpu(args[0]):
                self._refuse("numpy() of a GPU tensor", args[:1])
            return func(*args, **kwargs)
        if name in ("cpu", "cuda"):
            return _mark(args[0].view_as(args[0]), name == "cuda")
        if name == "to":
            return self._to(func, args, kwargs)
        if name == "__getitem__":
            return self._getitem(func, *args)
        if name == "__setitem__":
            return self._setitem(func, *args)
        if name == "__iter__":
            return iter(_mark(list(func(*args)), on_gpu(args[0])))
        return self._op(func, name, args, kwargs)

    def _op(self, func, name, args, kwargs):
        device = kwargs.get("device")
        if device is not None:
            kwargs["device"] = CPU
        inputs = _tensors(args, []) + _tensors({k: v for k, v in kwargs.items() if k != "generator"}, [])
        gpu = _gpu_device(device) if device is not None else any(map(on_gpu, inputs))
        generator = kwargs.get("generator")
        if gpu and isinstance(generator, torch.Generator) and generator.device.type == "cpu":
            self._refuse(f"a CPU generator in {name} on the GPU", inputs)
        if device is None and name not in ("copy_", "set_", "_has_compatible_shallow_copy_type") \
                and any(map(on_gpu, inputs)) and any(t.dim() > 0 and not on_gpu(t) for t in inputs):
            self._refuse(f"{name} between devices", inputs)
        out = func(*args, **kwargs)
        if name in ("copy_", "set_"):
            gpu = on_gpu(args[0])
        return self._mark_new(out, gpu, inputs)

    @staticmethod
    def _mark_new(out, gpu: bool, inputs):
        """Mark what an op made; a tensor it changed in place keeps its own device."""
        if isinstance(out, torch.Tensor) and not any(out is t for t in inputs):
            _mark(out, gpu)
        elif isinstance(out, (list, tuple)):
            for o in out:
                FakeCuda._mark_new(o, gpu, inputs)
        return out

    def _to(self, func, args, kwargs):
        t, rest = args[0], list(args[1:])
        if rest and isinstance(rest[0], torch.Tensor):  # t.to(other): other's device and dtype
            gpu, out = on_gpu(rest[0]), func(t, *rest, **kwargs)
        else:
            options = dict(kwargs)
            copy = options.pop("copy", False)
            device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **options)
            gpu = on_gpu(t) if device is None else device.type == "cuda"
            out = func(t, CPU, dtype, non_blocking, copy, memory_format=memory_format or torch.preserve_format)
        if out is t and gpu != on_gpu(t):
            out = out.view_as(out)
        return _mark(out, gpu)

    def _getitem(self, func, t, index):
        indices = _tensors(index, [])
        if not on_gpu(t) and any(on_gpu(i) and (i.dim() > 0 or i.dtype == torch.bool) for i in indices):
            self._refuse("a CPU tensor read at GPU indices", [t, *indices])
        return _mark(func(t, index), on_gpu(t))

    def _setitem(self, func, t, index, value):
        indices = _tensors(index, [])
        values = [value] if isinstance(value, torch.Tensor) and value.dim() > 0 else []
        if on_gpu(t) and _advanced(index) and values and not on_gpu(value):
            self._refuse("CPU values written into a GPU tensor at indices", [t, value, *indices])
        if not on_gpu(t) and (any(on_gpu(i) and i.dim() > 0 for i in indices)
                              or (_advanced(index) and values and on_gpu(value))):
            self._refuse("a CPU tensor written at GPU indices or with GPU values", [t, *values, *indices])
        return func(t, index, value)
