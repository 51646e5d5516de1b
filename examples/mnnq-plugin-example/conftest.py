# mnnq's fixtures (mnnq_pm, mnnq_install, tiny_model, tiny_convnet, mnnq_cli, ...).
pytest_plugins = ["mnnq.testing.fixtures"]
