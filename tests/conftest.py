import os
import shutil
import sys
import tempfile

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Set by the process that starts the run to the compilation cache of this run only.
_CACHE_ENV = "FUSION_JAX_TEST_XLA_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    """One XLA compilation cache for this run, shared by every process that compiles.

    The first process (the xdist controller, or pytest without ``-n``) makes
    an empty folder and removes it at the end, so nothing carries over from
    one run to the next. The xdist workers and every subprocess a test starts
    (notebook kernels, CLI commands, the two-process runs) inherit the
    variables and compile a program another process already compiled only
    once. Only the compile is shared: a cache hit is the same executable.
    """
    if os.environ.get(_CACHE_ENV):
        return  # an xdist worker: the controller made the folder
    folder = tempfile.mkdtemp(prefix="fusion_jax_xla_cache_")
    config._fusion_jax_xla_cache = folder
    os.environ[_CACHE_ENV] = folder
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # this process imported jax above, before the variables were set
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_fusion_jax_xla_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ[_CACHE_ENV]


#: Files whose tests take longest, longest first. The run starts with them (see
#: pytest_collection_modifyitems); the other files follow in the usual order.
SLOW_FILES = (
    "tests/test_distributed.py",
    "tests/test_transformer.py",
    "tests/test_speed_paths.py",
    "tests/test_readme.py",
    # after the tests above have compiled the training and evaluation it reuses
    "fusion_jax/transformer.py",
    "tests/test_notebooks.py",
    "tests/test_kernel_axes.py",
    "tests/test_program_params.py",
    "tests/test_noise.py",
    "tests/test_tiles.py",
    "tests/test_training.py",
    "tests/test_sweep.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the slowest files first, each file's tests in their order.

    With ``-n 2`` pytest-xdist hands out whole files (``--dist loadfile`` in
    pyproject.toml: a file's module fixtures and compiled functions are made
    once) in this order, so the long files overlap and the short ones fill the
    end, instead of a long file starting last and running alone.
    """
    root = config.rootpath
    for name in SLOW_FILES:
        if not (root / name).is_file():
            raise pytest.UsageError(f"tests/conftest.py: SLOW_FILES names {name}, no such file.")
    rank = {name: i for i, name in enumerate(SLOW_FILES)}

    def file_rank(item: pytest.Item) -> int:
        name = item.path.relative_to(root).as_posix()
        return rank.get(name, len(SLOW_FILES))

    items.sort(key=file_rank)  # stable: the rest keep their order


@pytest.fixture
def x64():
    """Enable 64-bit types for one test."""
    with jax.enable_x64(True):
        yield
