import os
import shutil
import sys
import tempfile
import warnings

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


#: Files that compile the same programs (same functions, shapes and settings), each
#: group run by one worker, file after file in the order given: the later files find
#: those programs traced and compiled in that worker's memory. Measured with a log
#: of JAX's compiles per file (``jax_log_compiles``): the doctests of
#: ``fusion_jax.transformer`` use the tests' configuration, and so on.
GROUPS = {
    "transformer": ("tests/test_transformer.py", "fusion_jax/transformer.py"),
    "digits": (
        "tests/test_training.py",
        "tests/test_cli.py",
        "tests/test_readme.py",
        "fusion_jax/training.py",
        "fusion_jax/digits.py",
    ),
    "flax_layers": (
        "tests/test_nnx.py",
        "tests/test_linen.py",
        "tests/test_kernel_axes.py",
        "tests/test_program_params.py",
        "fusion_jax/_nnx_layers.py",
        "fusion_jax/_linen_layers.py",
        "fusion_jax/nnx.py",
        "fusion_jax/linen.py",
        "fusion_jax/model_programming.py",
    ),
}

#: Work units (a group, or a file in no group) whose tests take longest, longest
#: first. The run starts with them (see pytest_collection_modifyitems); the other
#: files follow in the usual order, each its own unit.
SLOW_UNITS = (
    "flax_layers",
    "digits",
    "transformer",
    "tests/test_distributed.py",
    "tests/test_speed_paths.py",
    "tests/test_notebooks.py",
    "tests/test_flax_features.py",
    "tests/test_noise.py",
    "tests/test_tiles.py",
    "tests/test_sweep.py",
)


_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def _unit_of(path: str) -> str:
    """The work unit of a file: its group in :data:`GROUPS`, or the file itself."""
    return _GROUP_OF.get(path, path)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse a :data:`GROUPS` or :data:`SLOW_UNITS` that names no file, or a file twice.

    Checked at the start of the session, where an error reaches the
    terminal with ``-n 2`` too.
    """
    root = session.config.rootpath
    where = "tests/conftest.py:"
    seen: set[str] = set()
    for group, names in GROUPS.items():
        for name in names:
            if not (root / name).is_file():
                raise pytest.UsageError(f"{where} GROUPS[{group!r}] names {name}: no such file.")
            if name in seen:
                raise pytest.UsageError(f"{where} GROUPS names {name} twice.")
            seen.add(name)
    for unit in SLOW_UNITS:
        if unit in seen:
            raise pytest.UsageError(
                f"{where} SLOW_UNITS names {unit}, a file of group {_unit_of(unit)!r}."
            )
        if unit not in GROUPS and not (root / unit).is_file():
            raise pytest.UsageError(f"{where} SLOW_UNITS names {unit}: no such group or file.")
    if len(set(SLOW_UNITS)) != len(SLOW_UNITS):
        raise pytest.UsageError(f"{where} SLOW_UNITS names a unit twice.")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Sort the tests: the units of :data:`SLOW_UNITS` first, each unit's files in their order.

    With ``-n 2`` pytest-xdist hands whole units to the workers in this
    order (``--dist loadfile`` in pyproject.toml, with the units of
    :func:`pytest_xdist_make_scheduler`): a file's module fixtures and
    compiled functions are made once, the long units overlap, and the short
    ones fill the end instead of a long one starting last and running alone.
    A file in no group is a unit of its own.
    """
    root = config.rootpath
    rank = {unit: i for i, unit in enumerate(SLOW_UNITS)}
    first_seen: dict[str, int] = {}

    def sort_key(item: pytest.Item) -> tuple[int, int, int]:
        name = item.path.relative_to(root).as_posix()
        unit = _unit_of(name)
        first_seen.setdefault(unit, len(first_seen))
        position = GROUPS[unit].index(name) if unit in GROUPS else 0
        return rank.get(unit, len(SLOW_UNITS)), first_seen[unit], position

    items.sort(key=sort_key)  # stable: each file's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile``, with each group of :data:`GROUPS` one unit of work.

    (pytest-xdist's own ``--dist loadgroup`` reads ``xdist_group`` marks into
    node ids, which pytest 9 no longer lets a plugin change.) Should a later
    pytest-xdist drop what this builds on, the run warns and goes on with
    plain ``--dist loadfile``: the same tests, without the groups.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    try:
        from xdist.scheduler import LoadFileScheduling
    except ImportError:
        LoadFileScheduling = None
    if not hasattr(LoadFileScheduling, "_split_scope"):
        warnings.warn(
            "tests/conftest.py: this pytest-xdist has no LoadFileScheduling._split_scope; "
            "the files of GROUPS run as separate units (slower, the same tests).",
            stacklevel=1,
        )
        return None

    class _GroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit_of(super()._split_scope(nodeid))

    return _GroupScheduling(config, log)


@pytest.fixture
def x64():
    """Enable 64-bit types for one test."""
    with jax.enable_x64(True):
        yield
