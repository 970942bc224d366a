"""Installation: the import-time torch check, the recorded build, and the build backend
that compiles against the target environment's torch under pip's build isolation.
(.ci/matrix runs the real `pip install -e .` / `python -m build` under other torches.)"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fcn_kernels as fk
from fcn_kernels import _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "built, built_cuda, running, running_cuda, problem",
    [
        ("2.14.1+cu130", "13.0", "2.14.1+cu130", "13.0", None),
        ("2.14.0", "13.0", "2.14.1+cu130", "13.0", None),  # patch releases share the ABI
        ("2.14.1", None, "2.14.1+cu130", "13.0", None),  # CPU kernels under a CUDA torch
        ("2.11.0+cu130", "13.0", "2.14.1+cu130", "13.0", "built for torch 2.11.0"),
        ("2.14.1+cu130", "13.0", "2.14.1+cpu", None, "CPU-only build"),
        ("2.14.1+cu126", "12.6", "2.14.1+cu130", "13.0", "CUDA 12.6"),
        ("2.9.0", None, "2.10.0", None, "torch 2.10.0 is installed"),
    ],
)
def test_mismatch_rules(built, built_cuda, running, running_cuda, problem):
    why = _loader.mismatch(built, built_cuda, running, running_cuda)
    if problem is None:
        assert why is None
    else:
        assert problem in why


def test_build_info_describes_this_build():
    info = fk.build_info()
    assert info["torch"] == torch.__version__
    assert info["cuda"] == (torch.version.cuda if fk.cuda_built() else None)


def test_other_torch_gets_one_clear_error(monkeypatch):
    from fcn_kernels import _build_info

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.13.1+cu117")
    with pytest.raises(ImportError) as e:
        _loader.load()
    msg = str(e.value)
    assert "1.13.1+cu117" in msg and torch.__version__ in msg
    # An editable install (the package inside its source tree) is rebuilt with -e; a
    # wheel installed into site-packages, from its source tree without.
    src = os.path.realpath(_build_info.SOURCE_DIR)
    editable = os.path.realpath(fk.__file__).startswith(src + os.sep)
    assert f"pip install {'-e ' if editable else ''}{_build_info.SOURCE_DIR}" in msg


def test_load_failure_is_explained(monkeypatch):
    # Without a record (a hand-made build), the loader still names the cause and the fix.
    monkeypatch.setattr(_loader, "_build_info", lambda: None)

    def undefined_symbol(name, package=None):
        raise ImportError("_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEa")

    monkeypatch.setattr(_loader.importlib, "import_module", undefined_symbol)
    with pytest.raises(ImportError, match="undefined symbol") as e:
        _loader.load()
    assert "pip install" in str(e.value)


def test_rebuild_command(tmp_path):
    src = tmp_path / "src"
    (src / "fcn_kernels").mkdir(parents=True)
    (src / "setup.py").write_text("")
    assert _loader.rebuild_command(str(src), str(src / "fcn_kernels")) == f"pip install -e {src}"
    site = str(tmp_path / "site-packages" / "fcn_kernels")
    assert _loader.rebuild_command(str(src), site) == f"pip install {src}"
    assert "checkout" in _loader.rebuild_command(str(tmp_path / "gone"), site)


# pip isolates a build by putting a sitecustomize.py on PYTHONPATH that drops the
# interpreter's site-packages from sys.path and adds its build environment, which holds
# the build requirements (pip/_internal/build_env.py); the same here, setuptools only.
_ISOLATE = """
import site, sys
drop = set(site.getsitepackages())
sys.path[:] = [p for p in sys.path if p not in drop] + [{build_env!r}]
"""
_PROBE = (
    "import sys; sys.path.insert(0, {tools!r}); import fcn_kernels_build as b\n"
    "try:\n    import torch\nexcept ImportError:\n    print('isolated')\n"
    "b._use_target_torch(); import torch; print(torch.__file__)"
)


def _isolated_backend(tmp_path, **env):
    import setuptools

    build_env = tmp_path / "build-env"
    build_env.mkdir()
    site_packages = os.path.dirname(os.path.dirname(setuptools.__file__))
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):  # older setuptools: 3
        if os.path.isdir(os.path.join(site_packages, name)):
            (build_env / name).symlink_to(os.path.join(site_packages, name))
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(_ISOLATE.format(build_env=str(build_env)))
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONNOUSERSITE="1", **env)
    code = _PROBE.format(tools=os.path.join(ROOT, "tools", "backend"))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_backend_finds_the_target_torch_under_isolation(tmp_path):
    out = _isolated_backend(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "isolated"  # the simulation really hid torch
    assert lines[1] == torch.__file__  # and the backend found the very same torch


def test_backend_without_torch_says_what_to_install(tmp_path):
    out = _isolated_backend(tmp_path, FCN_KERNELS_TORCH_PYTHON=os.path.join(ROOT, "no-python"))
    assert out.returncode != 0
    assert "no PyTorch found" in out.stderr and "pip install torch" in out.stderr
