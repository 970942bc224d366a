"""``fuse(model, example_inputs)``: an existing model rewritten onto fcn_kernels' operators.

The model is captured with ``torch.export`` (``torch.fx.symbolic_trace`` where export
fails) and three ATen patterns are replaced:

* a transposed convolution (``aten.conv_transpose2d`` or ``aten.convolution`` with
  ``transposed=True``) whose output is used only through slices of its spatial dims
  (``h[:, :, 19:19 + x.size()[2], 19:19 + x.size()[3]]`` and the like, bounds constant
  or computed from sizes) -> ``fcn_kernels.conv_transpose2d_crop``;
* ``aten.upsample_bilinear2d`` (``F.interpolate(mode="bilinear")``, no antialias)
  -> ``fcn_kernels.bilinear_upsample``;
* ``aten.max_unpool2d`` fed by ``max_pool2d(..., return_indices=True)``
  -> ``fcn_kernels.max_unpool2d`` (ATen's op does not carry the pooling geometry; the
  pool that made the indices does).

Everything else is left exactly as captured. The returned module holds the original's
submodules, parameters and buffers (the same objects in the same dictionaries: training
it trains the original) and has its state_dict keys; ``.train()`` / ``.eval()`` set the
original's mode too. torch.export bakes train/eval behaviour (dropout, batch norm) and
dtypes into the graph, so the module keeps one captured graph per mode (per combination
of its modules' flags), capturing on the first call in a mode not seen before. Every
call checks the model against what its graphs were made from and follows any change
(FusedModule._graph): a captured graph may change speed, never a result. The graph
holds the operations the example ran, not the model's Python: input checks the model
makes in Python (e.g. "size divisible by 32") are not in it.
"""

import inspect
import logging
import math
import operator
import warnings

import torch
from torch import nn
from torch.export import Dim

from ._fuse_state import _State

log = logging.getLogger(__name__)

_aten = torch.ops.aten
_fk = torch.ops.fcn_kernels
_BIG = 2**62  # slice ends at or past this mean "to the end" (export writes INT64_MAX)


def fuse(
    model: nn.Module, example_inputs, dynamic_shapes=None, strict=False, capture="auto"
) -> nn.Module:
    """Returns ``model`` rewritten onto fcn_kernels' operators (see the module docstring).

    example_inputs: a tuple of positional inputs (a single tensor is accepted).
    dynamic_shapes: as for ``torch.export.export``, e.g.
    ``({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)`` to run other input sizes; without it the
    captured graph accepts the example's shapes only. The rewrites made are listed in
    ``fused.rewrites`` and logged (logger ``fcn_kernels.fuse``).
    capture: "auto" (torch.export, torch.fx if export fails), "export" or "fx".
    strict: passed to torch.export.export.
    """
    if capture not in ("auto", "export", "fx"):
        raise ValueError(f"capture must be 'auto', 'export' or 'fx', got {capture!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise TypeError(
            "example_inputs must be a tuple of the model's positional inputs, "
            f"got {type(example_inputs).__name__}"
        )
    return FusedModule(model, example_inputs, dynamic_shapes, strict, capture)


class FusedModule(nn.Module):
    """The module ``fuse`` returns: the original's submodules, parameters and buffers
    (shared) run through a rewritten captured graph."""

    def __init__(self, model, example_inputs, dynamic_shapes, strict, capture):
        super().__init__()
        # The original's own dictionaries, not copies: whatever is assigned later to
        # either module (a replaced layer, load_state_dict(assign=True)) is the other's.
        for name in ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"):
            object.__setattr__(self, name, getattr(model, name))
        object.__setattr__(self, "_original", model)  # not a child: no duplicate keys
        try:  # forward's signature, so that dynamic_shapes given as for the model apply
            self._signature = inspect.signature(model.forward)
        except (TypeError, ValueError):
            self._signature = None
        self._capture_args = (example_inputs, dynamic_shapes, strict, capture)
        self._graphs = {}  # the modules' train flags (None for torch.fx) -> graph
        self._seen = None  # the model's _State the graphs were captured or bound with
        self.capture = None  # "export" or "fx"
        self.rewrites = []
        self.training = model.training
        self._graph()

    def _graph(self, args=None):
        """The graph for the model as it is now, for the call's positional inputs
        ``args`` (the example inputs where None), checked on every call (a cache may
        change speed, never a result): a module replaced or added, or a module's
        attribute changed (``conv.padding = 2``, ``dropout.p = 0.3``), means capturing
        again; a parameter or buffer replaced (setattr, load_state_dict(assign=True)),
        binding it; for an export graph, which records them, a dtype, device or shape
        changed (``.data = ...``) means capturing again too. Export bakes each module's
        train/eval behaviour in: one graph per combination of the modules' flags (a
        frozen batch norm in a training model is its own combination); torch.fx's graph
        calls the modules (one graph). A capture made during a call starts from the
        call's inputs, which have the dtypes and devices the model has now."""
        now = _State(self._original, meta=self.capture != "fx")
        seen, self._seen = self._seen, now
        changed = seen and now.changed(seen, self.capture == "export")
        if changed:
            log.info("fcn_kernels.fuse: capturing again: %s", changed)
            self._graphs.clear()
        elif seen and not now.same_tensors(seen):
            for gm in self._graphs.values():
                self._bind(gm)
        key = None if self.capture == "fx" else now.flags
        if key not in self._graphs:
            examples, *rest = self._capture_args
            if args is not None and len(args) == len(examples):
                examples = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            gm, self.capture, rewrites = _capture(self._original, examples, *rest)
            self._bind(gm)
            key = None if self.capture == "fx" else now.flags
            self._graphs[key] = gm
            # What tracing left (a forward that sets attributes): the next call's baseline.
            self._seen = _State(self._original, meta=self.capture != "fx")
            if not self.rewrites:
                self.rewrites = rewrites
                log.info(
                    "fcn_kernels.fuse (%s): %d rewrite(s): %s",
                    self.capture,
                    len(rewrites),
                    "; ".join(rewrites) or "none",
                )
        return self._graphs[key]

    def _bind(self, gm):
        """Points the graph module's parameters and buffers at the original's objects
        (after capture, and whenever the original's are replaced)."""
        m = self._original
        for kind, items in (
            ("_parameters", m.named_parameters(remove_duplicate=False)),
            ("_buffers", m.named_buffers(remove_duplicate=False)),
        ):
            for fqn, t in items:
                *path, leaf = fqn.split(".")
                owner = gm
                for part in path:
                    owner = getattr(owner, part, None)
                    if owner is None:
                        break
                if isinstance(owner, nn.Module) and leaf in getattr(owner, kind):
                    getattr(owner, kind)[leaf] = t

    def train(self, mode=True):
        """Sets the mode of this module, the original and every submodule they share
        (as nn.Module.train does for its children)."""
        super().train(mode)
        self._original.train(mode)
        return self

    @property
    def forward(self):
        """Calls the captured graph; has the original forward's signature (a property,
        so that ``inspect.signature(fused.forward)``, as torch.export and
        torch.onnx.export read it, gives it)."""

        def forward(*args, **kwargs):
            return self._graph(None if kwargs else args)(*args, **kwargs)

        if self._signature is not None:
            forward.__signature__ = self._signature
        return forward

    def extra_repr(self):
        return f"capture={self.capture!r}, rewrites={len(self.rewrites)}"


# --- capture --------------------------------------------------------------------------


def _capture(model, example_inputs, dynamic_shapes, strict, capture):
    """Captures the model in its modules' current modes (and leaves them as they were)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        from ._fuse_fx import _rewrite_fx

        if capture == "fx":
            gm = torch.fx.symbolic_trace(model)
            return gm, "fx", _rewrite_fx(gm)
        try:
            ep = torch.export.export(
                model, example_inputs, dynamic_shapes=dynamic_shapes, strict=strict
            )
        except Exception as export_error:  # noqa: BLE001 (any failure: try torch.fx)
            if capture == "export":
                raise
            try:
                gm = torch.fx.symbolic_trace(model)
            except Exception as fx_error:  # noqa: BLE001
                raise RuntimeError(
                    f"fcn_kernels.fuse: torch.export failed ({export_error}) and so did "
                    f"torch.fx.symbolic_trace ({fx_error})"
                ) from fx_error
            log.warning(
                "fcn_kernels.fuse: torch.export failed (%s: %s); captured with "
                "torch.fx.symbolic_trace instead (torch-level patterns only; the graph "
                "runs any input size)",
                type(export_error).__name__,
                str(export_error).strip().split("\n")[0],
            )
            return gm, "fx", _rewrite_fx(gm)
        gm = ep.module()
        problems, near = _check_dynamic(gm, example_inputs, dynamic_shapes, model)
        if near and capture == "auto":
            # Guards that refuse sizes next to the example (torch 2.11 puts a parity
            # guard on ceil_mode pooling) break the graph for half the sizes asked
            # for: torch.fx's graph runs every size, so prefer it when it traces.
            try:
                fx_gm = torch.fx.symbolic_trace(model)
            except Exception:  # noqa: BLE001 (keep the export graph, warn below)
                fx_gm = None
            if fx_gm is not None:
                log.warning(
                    "fcn_kernels.fuse: torch.export captured the model for fewer input "
                    "sizes than dynamic_shapes asks (%s); captured with "
                    "torch.fx.symbolic_trace instead, which runs every size",
                    "; ".join(problems),
                )
                return fx_gm, "fx", _rewrite_fx(fx_gm)
        if problems:
            warnings.warn(
                "fcn_kernels.fuse: torch.export captured the model for fewer input sizes "
                "than dynamic_shapes asks: "
                + "; ".join(problems)
                + ". Run sizes the graph accepts, or fuse with an example of the size you "
                "run.",
                stacklevel=5,
            )
        return gm, "export", _rewrite_aten(gm)
    finally:
        for m, was in modes:
            m.training = was


def _check_dynamic(gm, example_inputs, dynamic_shapes, model=None):
    """The sizes of the dims the user asked to be dynamic that the captured graph refuses
    (export made a dim static, or its guards - ranges, equations between sizes, parity -
    exclude them) but the model itself runs, probed at 1-3 above, half, 1.5 and 2 times
    the example's size (within the Dim's min/max) with the graph's guard function on meta
    tensors. A refused size is then run through ``model`` (eval mode, no grad, zeros): a
    size the model refuses too (segmentation_models_pytorch asks for multiples of 32) is
    its contract, not a narrowing. Returns (problems, near): near when a size 1-3 above the
    example is refused."""
    guards = getattr(gm, "_guards_fn", None)
    if guards is None or not isinstance(dynamic_shapes, (tuple, list)):
        return [], False
    if len(dynamic_shapes) != len(example_inputs):
        return [], False  # a nested form: not checked
    meta = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in example_inputs]
    problems, near = [], False
    for i, spec in enumerate(dynamic_shapes):
        if isinstance(spec, (tuple, list)):
            spec = dict(enumerate(spec))
        if not isinstance(spec, dict) or not isinstance(meta[i], torch.Tensor):
            continue
        for dim, want in spec.items():
            if (
                want is None
                or want is Dim.STATIC
                or isinstance(want, int)
                or not isinstance(dim, int)
                or not -meta[i].dim() <= dim < meta[i].dim()
            ):
                continue
            n = meta[i].shape[dim]
            lo, hi = getattr(want, "min", None) or 2, getattr(want, "max", None) or math.inf
            refused = []
            for m in sorted({n + 1, n + 2, n + 3, n // 2, n + n // 2, 2 * n} - {n}):
                if not lo <= m <= hi:
                    continue
                shape = list(meta[i].shape)
                shape[dim] = m
                probe = list(meta)
                probe[i] = torch.empty(shape, dtype=meta[i].dtype, device="meta")
                try:
                    guards(*probe)
                except Exception as e:  # noqa: BLE001 (a failed guard: AssertionError, ...)
                    if model is not None and not _model_runs(model, example_inputs, i, shape):
                        continue
                    refused.append(f"{m} ({str(e).strip().splitlines()[0][:120]})")
                    near = near or n < m <= n + 3
            if refused:
                problems.append(f"input {i} dim {dim} (example {n}) refuses " + ", ".join(refused))
    return problems, near


def _model_runs(model, example_inputs, i, shape):
    """Whether the model's own forward runs with input i resized to shape (zeros), in
    eval mode without grad (no running statistics change); the caller restores modes."""
    t = example_inputs[i]
    args = list(example_inputs)
    args[i] = torch.zeros(shape, dtype=t.dtype, device=t.device)
    model.eval()
    try:
        with torch.no_grad():
            model(*args)
    except Exception:  # noqa: BLE001 (the model refuses the size: its contract)
        return False
    return True


def _args(node):
    """The node's arguments in schema order, defaults filled in."""
    out = []
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out.append(node.args[i])
        elif a.name in node.kwargs:
            out.append(node.kwargs[a.name])
        else:
            out.append(a.default_value)
    return out


def _pair(v):
    if isinstance(v, (list, tuple)):
        return [v[0], v[0]] if len(v) == 1 else list(v)
    return [v, v]


def _where(node):
    """The module path a node came from (for the rewrite list), or its name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return path
    return node.name


def _shape(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


class _Emit:
    """Integer arithmetic on ints and graph nodes: folds ints, inserts nodes otherwise."""

    def __init__(self, graph):
        self.graph = graph

    def op(self, f, a, b):
        if not isinstance(a, torch.fx.Node) and not isinstance(b, torch.fx.Node):
            return f(a, b)
        return self.graph.call_function(f, (a, b))

    def size(self, x, dim):
        n = _shape(x)[dim]
        return n if isinstance(n, int) else self.graph.call_function(_aten.sym_size.int, (x, dim))


# --- rewriting the export (ATen) graph -------------------------------------------------


def _rewrite_aten(gm):
    g = gm.graph
    rewrites = []
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        if node.target in (_aten.conv_transpose2d.input, _aten.convolution.default):
            what = _deconv_crop(g, node)
        elif node.target in (_aten.upsample_bilinear2d.vec, _aten.upsample_bilinear2d.default):
            what = _bilinear(g, node)
        elif node.target is _aten.max_unpool2d.default:
            what = _unpool(g, node)
        else:
            continue
        if what:
            rewrites.append(what)
    return _finish(gm, rewrites)


def _finish(gm, rewrites):
    """After rewriting: drop the replaced nodes, check and regenerate the module."""
    if rewrites:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return rewrites


def _deconv_crop(g, node):
    a = _args(node)
    if node.target is _aten.convolution.default:
        x, w, b, stride, padding, dilation, transposed, output_padding, groups = a
        if transposed is not True:
            return None
    else:
        x, w, b, stride, padding, output_padding, groups, dilation = a
    shape = _shape(x)
    if shape is None or len(shape) != 4 or len(_shape(w) or ()) != 4:
        return None
    stride, padding, output_padding, dilation = map(
        _pair, (stride, padding, output_padding, dilation)
    )
    # Follow the chain of slices (each the only user of the previous value), one per dim.
    chain, spans, cur = [], {}, node
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user.op != "call_function" or user.target is not _aten.slice.Tensor:
            break
        src, dim, start, end, step = _args(user)
        dim = dim % 4
        if src is not cur or step != 1 or dim in spans:
            break
        spans[dim] = (start, end)
        chain.append(user)
        cur = user
    if 2 not in spans and 3 not in spans:
        return None  # used unsliced (or not only through spatial slices): left as is
    if set(spans) - {2, 3} and not _full_slice(spans, node):
        return None  # a batch/channel crop: not this pattern

    emit = _Emit(g)
    with g.inserting_before(chain[-1]):
        offset, size = [], []
        for d in (2, 3):
            i = d - 2
            n = emit.size(x, d)
            kh = _shape(w)[d]
            # full = (n - 1) * s - 2 p + dil * (k - 1) + output_padding + 1
            full = emit.op(
                operator.add,
                emit.op(operator.mul, emit.op(operator.sub, n, 1), stride[i]),
                -2 * padding[i] + dilation[i] * (kh - 1) + output_padding[i] + 1,
            )
            start, end = spans.get(d, (None, None))
            start = _bound(emit, start, full, 0)
            end = _bound(emit, end, full, full)
            if (
                not isinstance(start, torch.fx.Node)
                and not isinstance(end, torch.fx.Node)
                and not isinstance(full, torch.fx.Node)
            ):
                start, end = min(max(start, 0), full), min(max(end, 0), full)
                if end <= start:
                    return None  # empty: ATen returns an empty tensor, leave it
            offset.append(start)
            size.append(emit.op(operator.sub, end, start))
        new = g.call_function(
            _fk.conv_transpose2d_crop.default,
            (x, w, b, stride, padding, output_padding, groups, dilation, offset, size),
        )
    new.meta.update(chain[-1].meta)
    chain[-1].replace_all_uses_with(new)
    for n in reversed(chain):
        g.erase_node(n)
    g.erase_node(node)
    return f"{_where(node)}: conv_transpose2d + crop -> fcn_kernels.conv_transpose2d_crop"


def _full_slice(spans, node):
    """True when the slices on dims 0/1 keep everything (start 0, end past the size)."""
    shape = _shape(node)
    for d in set(spans) - {2, 3}:
        start, end = spans[d]
        if start not in (None, 0):
            return False
        if end is None or (
            isinstance(end, int)
            and (end >= _BIG or (isinstance(shape[d], int) and end >= shape[d]))
        ):
            continue
        return False
    return True


def _bound(emit, v, full, default):
    """A slice bound as a non-negative position (None: the default; >= 2**62: the end;
    a negative int counts from the end, as in Python)."""
    if v is None:
        return default
    if isinstance(v, int):
        if v >= _BIG:
            return full
        if v < 0:
            return emit.op(operator.add, full, v)
    return v


def _bilinear(g, node):
    a = _args(node)
    x = a[0]
    shape = _shape(x)
    if shape is None or len(shape) != 4:
        return None
    if node.target is _aten.upsample_bilinear2d.default:
        _, size, ac, sh, sw = a
        args = (x, list(size), ac, sh, sw)
    else:
        _, size, ac, scales = a
        if size is not None:
            args = (x, list(size), ac, None, None)
        else:
            emit = _Emit(g)
            scales = _pair(scales)
            with g.inserting_before(node):
                size = []
                for d, s in zip((2, 3), scales):
                    n = emit.size(x, d)
                    if float(s).is_integer():
                        size.append(emit.op(operator.mul, n, int(s)))
                    elif isinstance(n, int):
                        size.append(math.floor(n * s))
                    else:
                        size.append(
                            g.call_function(math.floor, (g.call_function(operator.mul, (n, s)),))
                        )
            args = (x, size, ac, float(scales[0]), float(scales[1]))
    with g.inserting_before(node):
        new = g.call_function(_fk.bilinear_upsample.default, args)
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    return f"{_where(node)}: upsample_bilinear2d -> fcn_kernels.bilinear_upsample"


def _unpool(g, node):
    x, indices, output_size = _args(node)
    if len(_shape(x) or ()) != 4:
        return None
    pool = (
        indices.args[0]
        if (
            isinstance(indices, torch.fx.Node)
            and indices.target is operator.getitem
            and indices.args[1] == 1
        )
        else None
    )
    if not (
        isinstance(pool, torch.fx.Node) and pool.target is _aten.max_pool2d_with_indices.default
    ):
        return None  # indices of unknown origin: the pooling geometry is unknown
    _, kernel, stride, padding, dilation, _ = _args(pool)
    kernel, padding, dilation = _pair(kernel), _pair(padding), _pair(dilation)
    stride = kernel if not stride else _pair(stride)
    kernel = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]  # the window's extent
    # Our op accepts output sizes within stride - 1 of the default (as F.max_unpool2d
    # checks against the unpool's own arguments); check the example's sizes.
    in_hw, out_hw = _shape(x)[2:], [_hint(v) for v in output_size]
    for n, o, k, s, p in zip(in_hw, out_hw, kernel, stride, padding):
        default = (_hint(n) - 1) * s + k - 2 * p
        if o is None or not default - s < o < default + s or o <= 0:
            return None
    with g.inserting_before(node):
        new = g.call_function(
            _fk.max_unpool2d.default, (x, indices, kernel, stride, padding, list(output_size))
        )
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    return f"{_where(node)}: max_unpool2d -> fcn_kernels.max_unpool2d"


def _hint(v):
    """The example's value of an int, SymInt or size node (None if unknown)."""
    if isinstance(v, torch.fx.Node):
        v = v.meta.get("val")
    if isinstance(v, torch.SymInt):
        return v.node.hint
    return v if isinstance(v, int) else None
