"""Shared fixtures; each area keeps its own in tests/fixtures_*.py."""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.fixtures_model import *  # noqa: F403
from tests.fixtures_obs import *  # noqa: F403
from tests.fixtures_twitch import *  # noqa: F403


def pytest_configure(config: pytest.Config) -> None:
    """The host's caches (category embeddings, measured dtypes) go to a folder of this run,
    never into the user's ~/.cache, in this process and every host it starts; matplotlib's
    font cache stays where it is (rebuilding it costs seconds)."""
    os.environ.setdefault("MPLCONFIGDIR", os.path.expanduser("~/.cache/matplotlib"))
    folder = tempfile.mkdtemp(prefix="chat-diffusion-tests-cache-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ["XDG_CACHE_HOME"] = folder


@pytest.fixture(autouse=True)
def _host_loggers_as_they_were() -> Iterator[None]:
    """A bench or CLI run inside a test may quiet the host's loggers (bench_engine sets
    `generator_host` to ERROR); later tests read those loggers' lines, so each test gets
    the levels back as they were before it."""
    names = [
        "generator_host",
        *[n for n in logging.root.manager.loggerDict if n.startswith("generator_host.")],
    ]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("generator_host") and name not in levels:
            logging.getLogger(name).setLevel(logging.NOTSET)
