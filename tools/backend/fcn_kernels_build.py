"""PEP 517 build backend: setuptools, compiled against the torch of the target environment.

The C++/CUDA extension must be compiled against the torch that will import it. With
build isolation (pip's default) the backend runs in a throwaway environment holding only
the [build-system] requirements, so `import torch` would fail there, and listing torch as a
build requirement would download a second, possibly different, torch. Instead, before
setup.py runs, this backend finds the interpreter the package is being installed for,
asks it where its torch lives, and appends that interpreter's import path to ours (after
the isolated environment's own entries, so the pinned setuptools still wins).

Where the target interpreter is looked for, first match wins:
  1. torch already importable (`--no-build-isolation`, or a frontend that installed it);
  2. sys.executable with pip's isolation variables removed (pip runs the backend with
     the target environment's own interpreter);
  3. $VIRTUAL_ENV / $CONDA_PREFIX (an activated environment; `python -m build`, uv);
  4. the interpreter of the parent process (`python -m build` from a bare venv path);
  5. python3 / python on PATH, outside the isolated environment's own directories.
Each candidate must be the same Python version as this one (the extension is built for
this interpreter's ABI). FCN_KERNELS_TORCH_PYTHON=/path/to/python names it explicitly.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import build_meta as _setuptools

_QUERY = (
    "import json, sys, sysconfig, torch; "
    "print(json.dumps({'abi': sysconfig.get_config_var('EXT_SUFFIX'), 'path': sys.path, "
    "'torch': torch.__version__}))"
)
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE")  # what pip sets to isolate a build


def _parent_python():
    """The interpreter of the process that started this backend (Linux /proc only)."""
    try:
        ppid = os.getppid()
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode()
        cwd = os.readlink(f"/proc/{ppid}/cwd")
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    if "python" not in os.path.basename(argv0):
        return None
    if os.sep in argv0:
        return os.path.join(cwd, argv0)
    return shutil.which(argv0)


def _candidates():
    named = os.environ.get("FCN_KERNELS_TORCH_PYTHON")
    if named:
        yield named
        return
    yield sys.executable
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if os.environ.get(var):
            yield os.path.join(os.environ[var], "bin", "python")
    yield _parent_python()
    own = {os.path.dirname(sys.executable)}
    own.update(p for p in os.environ.get("PATH", "").split(os.pathsep) if "build-env" in p)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in own
    )
    for name in ("python3", "python"):
        yield shutil.which(name, path=path)


def _query(python):
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    try:
        out = subprocess.run(
            [python, "-c", _QUERY], env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _use_target_torch():
    """Make the target environment's torch importable here, or stop with what to do."""
    try:
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    tried = []
    for python in _candidates():
        if not python or python in tried:
            continue
        tried.append(python)
        found = _query(python)
        if found is None:
            continue
        if found["abi"] != sysconfig.get_config_var("EXT_SUFFIX"):
            continue  # another Python: the extension would not load there
        sys.path.extend(p for p in found["path"] if p and p not in sys.path)
        print(
            f"fcn-kernels: building against torch {found['torch']} of {python}",
            file=sys.stderr,
        )
        return
    raise SystemExit(
        "fcn-kernels: no PyTorch found to build against.\n"
        "The C++/CUDA kernels are compiled against the torch already installed in the\n"
        "environment you install into (looked in: " + ", ".join(tried) + ").\n"
        "Install PyTorch first (https://pytorch.org/get-started/locally/, e.g.\n"
        "`pip install torch`), then run `pip install -e .` again. If torch lives in\n"
        "another interpreter of this Python version, name it with\n"
        "FCN_KERNELS_TORCH_PYTHON=/path/to/python."
    )


def _with_torch(hook):
    def wrapped(*args, **kwargs):
        _use_target_torch()
        return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped


# Every hook that runs setup.py for a wheel needs torch; an sdist compiles nothing.
get_requires_for_build_wheel = _with_torch(_setuptools.get_requires_for_build_wheel)
prepare_metadata_for_build_wheel = _with_torch(_setuptools.prepare_metadata_for_build_wheel)
build_wheel = _with_torch(_setuptools.build_wheel)


def _sdist(hook):
    def wrapped(*args, **kwargs):
        os.environ["FCN_KERNELS_SDIST"] = "1"  # setup.py: no torch, no extension
        return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    return wrapped


get_requires_for_build_sdist = _sdist(_setuptools.get_requires_for_build_sdist)
build_sdist = _sdist(_setuptools.build_sdist)
if hasattr(_setuptools, "build_editable"):  # PEP 660, setuptools >= 64
    get_requires_for_build_editable = _with_torch(_setuptools.get_requires_for_build_editable)
    prepare_metadata_for_build_editable = _with_torch(
        _setuptools.prepare_metadata_for_build_editable
    )
    build_editable = _with_torch(_setuptools.build_editable)
