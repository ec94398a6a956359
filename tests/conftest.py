"""Shared fixtures: a tiny random Gemma 3 preset for fast tests, the real 270M for the slow tier."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("KERAS_BACKEND", "torch")

# Tests press Ctrl-C on the processes they start. A suite launched in the background by a shell
# without job control (`cmd &` in a script) inherits SIGINT ignored, and so would those processes
# (an ignored signal stays ignored across exec); a handled one is reset to the default there.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest

# The fixtures of the queue, server and deploy tests, for every module: imported by name they
# would read as unused imports (and shadowed names) to linters.
pytest_plugins = ["queue_fixtures", "serve_fixtures", "deploy_fixtures"]

TINY_MAX_LENGTH = 512
ETHOS = os.path.join(os.path.dirname(__file__), "..", "data", "ethos", "Ethos_Dataset_Binary.csv")


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    from agile.testing import make_tiny_preset

    return make_tiny_preset(tmp_path_factory.mktemp("tiny") / "preset")


@pytest.fixture(scope="session")
def tiny_model(tiny_preset):
    from agile.models import load_model

    # The tiny vocabulary spends ~100 tokens on the template: give prompts room.
    return load_model(str(tiny_preset), sequence_length=TINY_MAX_LENGTH)


@pytest.fixture(scope="session")
def real_model():
    """The embedded Gemma 3 270M (converted once into AGILE_HOME, then loaded from there)."""
    from agile.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def ethos_comments() -> list[str]:
    import pandas as pd

    return pd.read_csv(ETHOS, sep=";")["comment"].tolist()


@pytest.fixture(scope="session", params=["gemma", "gemma2", "gemma3"])
def family_model(request, tmp_path_factory):
    """A tiny random model of each Gemma family keras-hub defines (Gemma 2: soft caps, sliding window)."""
    from agile.models import load_model
    from agile.testing import make_tiny_preset

    preset = make_tiny_preset(tmp_path_factory.mktemp(request.param) / "preset", family=request.param)
    return load_model(str(preset), sequence_length=TINY_MAX_LENGTH)


# Fixtures that start a Redis server or processes: a test that uses one is in the integration tier.
INTEGRATION_FIXTURES = {"private_redis", "redis_settings", "processes", "module_processes", "stack"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs Redis or processes `redis`, from its fixtures, so no test is missed by hand."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
