"""Load the compiled extension, or say plainly why it cannot be loaded.

A C++ extension only loads under the torch release it was compiled against; under
another it fails with an undefined-symbol traceback. setup.py records what it built for
in fcn_kernels/_build_info.py; this module compares that with the running torch before
loading fcn_kernels._C, and turns any load failure into one message with the rebuild
command.
"""

import importlib
import os

import torch


def _release(version):
    """'2.14.1+cu130' -> (2, 14)."""
    parts = version.split("+")[0].split(".")
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts[:2])


def mismatch(built_torch, built_cuda, torch_version, torch_cuda):
    """Why an extension built for (built_torch, built_cuda) cannot run under
    (torch_version, torch_cuda), or None when it can. CUDA None = no CUDA."""
    if _release(built_torch) != _release(torch_version):
        return f"it was built for torch {built_torch} but torch {torch_version} is installed"
    if built_cuda and not torch_cuda:
        return (
            f"it was built with CUDA {built_cuda} kernels but torch {torch_version} "
            "is a CPU-only build"
        )
    if built_cuda and built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"it was built for CUDA {built_cuda} (torch {built_torch}) but torch "
            f"{torch_version} uses CUDA {torch_cuda}"
        )
    return None


def rebuild_command(source_dir, package_dir):
    """The command that rebuilds the extension against the torch now installed."""
    if source_dir and os.path.isfile(os.path.join(source_dir, "setup.py")):
        inside = os.path.commonpath([source_dir, package_dir]) == source_dir
        return f"pip install -e {source_dir}" if inside else f"pip install {source_dir}"
    return "pip install -e <your fcn-kernels checkout> (reinstall from source with this torch)"


def _build_info():
    try:
        from . import _build_info as info
    except ImportError:  # built before the record existed, or by hand
        return None
    return info


def load():
    """Import fcn_kernels._C (which registers the operators), checking the torch first."""
    info = _build_info()
    package_dir = os.path.dirname(os.path.abspath(__file__))
    source_dir = getattr(info, "SOURCE_DIR", None)
    why = None
    if info is not None:
        why = mismatch(info.TORCH_VERSION, info.CUDA_VERSION, torch.__version__, torch.version.cuda)
    if why is None:
        try:
            return importlib.import_module("._C", __package__)
        except (ImportError, OSError) as e:
            why = f"it failed to load under torch {torch.__version__} ({e})"
    raise ImportError(
        f"fcn_kernels cannot use its compiled extension: {why}.\n"
        f"Rebuild it against the installed torch with:\n    "
        f"{rebuild_command(source_dir, package_dir)}"
    )


extension = load()
