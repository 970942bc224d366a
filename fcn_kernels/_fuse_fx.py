"""fuse()'s rewriting of a torch.fx (torch-level) graph, where torch.export failed:
``F.interpolate(mode="bilinear")``, ``nn.Upsample``, ``F.max_unpool2d``,
``nn.MaxUnpool2d`` and ``nn.ConvTranspose2d`` + slicing onto fcn_kernels' operators."""

import operator

import torch
from torch import nn

from .fuse import _finish


def _rewrite_fx(gm):
    import torch.nn.functional as F

    from .bilinear import bilinear_upsample
    from .deconv import conv_transpose2d_crop
    from .unpool import max_unpool2d

    g = gm.graph
    rewrites = []
    for node in list(g.nodes):
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "call_function" and node.target is F.interpolate:
            kw = dict(
                zip(
                    (
                        "input",
                        "size",
                        "scale_factor",
                        "mode",
                        "align_corners",
                        "recompute_scale_factor",
                        "antialias",
                    ),
                    node.args,
                )
            )
            kw.update(node.kwargs)
            if kw.get("mode", "nearest") != "bilinear" or kw.get("antialias", False):
                continue
            kw.pop("mode")
            x = kw.pop("input")
            kw.pop("antialias", None)
            node.target, node.args, node.kwargs = bilinear_upsample, (x,), kw
            rewrites.append(f"{node.name}: F.interpolate -> fcn_kernels.bilinear_upsample")
        elif isinstance(mod, nn.Upsample) and mod.mode == "bilinear":
            with g.inserting_before(node):
                new = g.call_function(
                    bilinear_upsample,
                    node.args,
                    dict(
                        size=mod.size,
                        scale_factor=mod.scale_factor,
                        align_corners=mod.align_corners,
                        recompute_scale_factor=mod.recompute_scale_factor,
                    ),
                )
            node.replace_all_uses_with(new)
            g.erase_node(node)
            rewrites.append(f"{node.target}: nn.Upsample -> fcn_kernels.bilinear_upsample")
        elif node.op == "call_function" and node.target is F.max_unpool2d:
            node.target = max_unpool2d
            rewrites.append(f"{node.name}: F.max_unpool2d -> fcn_kernels.max_unpool2d")
        elif isinstance(mod, nn.MaxUnpool2d) and type(mod) is nn.MaxUnpool2d:
            with g.inserting_before(node):
                args = list(node.args) + [None] * (3 - len(node.args))
                new = g.call_function(
                    max_unpool2d,
                    (args[0], args[1], mod.kernel_size, mod.stride, mod.padding),
                    dict(output_size=node.kwargs.get("output_size", args[2])),
                )
            node.replace_all_uses_with(new)
            g.erase_node(node)
            rewrites.append(f"{node.target}: nn.MaxUnpool2d -> fcn_kernels.max_unpool2d")
        elif type(mod) is nn.ConvTranspose2d and len(node.args) == 1 and not node.kwargs:
            what = _fx_deconv_crop(gm, node, mod, conv_transpose2d_crop)
            if what:
                rewrites.append(what)
    return _finish(gm, rewrites)


def _fx_deconv_crop(gm, node, mod, op):
    """nn.ConvTranspose2d whose only use is ``out[:, :, a:b, c:d]`` (operator.getitem
    with a tuple of slices; bounds ints or graph values)."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op != "call_function" or user.target is not operator.getitem:
        return None
    index = user.args[1]
    if (
        not isinstance(index, tuple)
        or len(index) != 4
        or not all(isinstance(s, slice) and s.step in (None, 1) for s in index)
    ):
        return None
    if any(s.start not in (None, 0) or s.stop is not None for s in index[:2]):
        return None
    starts, stops = [], []
    for s in index[2:]:
        if isinstance(s.start, int) and s.start < 0 or isinstance(s.stop, int) and s.stop < 0:
            return None
        starts.append(s.start or 0)
        stops.append(s.stop)
    if any(v is None for v in stops):
        if not all(v is None for v in stops):
            return None
        size = None
    else:
        with gm.graph.inserting_before(user):
            size = [
                gm.graph.call_function(operator.sub, (b, a))
                if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node)
                else b - a
                for a, b in zip(starts, stops)
            ]
    g = gm.graph
    with g.inserting_before(user):
        w = g.get_attr(f"{node.target}.weight")
        b = g.get_attr(f"{node.target}.bias") if mod.bias is not None else None
        new = g.call_function(
            op,
            (
                node.args[0],
                w,
                b,
                mod.stride,
                mod.padding,
                mod.output_padding,
                mod.groups,
                mod.dilation,
            ),
            dict(offset=starts, size=size),
        )
    user.replace_all_uses_with(new)
    g.erase_node(user)
    g.erase_node(node)
    return f"{node.target}: ConvTranspose2d + crop -> fcn_kernels.conv_transpose2d_crop"
