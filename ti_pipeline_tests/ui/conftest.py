"""The ``ui`` marker: tests that drive the Dagster UI in headless Chromium."""


def pytest_configure(config):
    config.addinivalue_line("markers", "ui: drives `dagster dev` in headless Chromium (chromium + chromium-driver)")
