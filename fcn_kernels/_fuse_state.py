"""What a fused module's captured graph was made from, compared on every call
(fuse.py, FusedModule._graph): a captured graph may change speed, never a result."""

import operator


class _State:
    """What a captured graph takes from the model besides its inputs: the modules (the
    objects, their train flags and their other attributes: a layer's stride, a dropout's
    p), and their parameters and buffers (the objects, and their dtypes, devices and
    shapes, which ``.data = ...`` changes in place)."""

    def __init__(self, model, meta):
        # model.modules() without its generators and names (this runs on every call)
        self.modules, seen, todo = [], set(), [model]
        while todo:
            m = todo.pop()
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                self.modules.append(m)
                todo += reversed(m._modules.values())
        self.flags = tuple(m.training for m in self.modules)
        self.attrs = [m.__dict__.copy() for m in self.modules]
        for a in self.attrs:
            del a["training"]  # a graph per mode: a mode change is not a change
        self.tensors = []
        for m in self.modules:
            self.tensors += m._parameters.values()
            self.tensors += m._buffers.values()
        self.meta = meta and [
            None if t is None else (t.dtype, t.device, t.shape) for t in self.tensors
        ]

    def changed(self, old, export):
        """Why a graph made when the model was ``old`` no longer fits it; None if it does."""
        if len(self.modules) != len(old.modules) or not all(
            map(operator.is_, self.modules, old.modules)
        ):
            return "a module was replaced, added or removed"
        try:  # equal values (the same object is equal without being compared)
            same = self.attrs == old.attrs
        except Exception:  # noqa: BLE001 (values that cannot be compared: a change)
            same = False
        if not same:
            for m, now, was in zip(self.modules, self.attrs, old.attrs):
                for k in now.keys() | was.keys():
                    if k not in now or k not in was or _differs(now[k], was[k]):
                        return f"attribute {k!r} of a {type(m).__name__} changed"
            return "a module's attribute changed"
        if export and self.meta != old.meta:
            return "a parameter's or buffer's dtype, device or shape changed"
        return None

    def same_tensors(self, other):
        return len(self.tensors) == len(other.tensors) and all(
            map(operator.is_, self.tensors, other.tensors)
        )


def _differs(a, b):
    if a is b:
        return False
    try:
        return not bool(a == b)
    except Exception:  # noqa: BLE001 (cannot be compared: a tensor, say)
        return True
