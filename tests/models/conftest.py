import pytest
from tinylogs import small_log


@pytest.fixture
def small_csr():
    return small_log()
