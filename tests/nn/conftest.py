"""tests/nn/user_models.py, importable as ``user_models`` by every test below (the tests run with
--import-mode=importlib, so the folder is not on ``sys.path``)."""

import importlib.util
import pathlib
import sys

if "user_models" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("user_models", pathlib.Path(__file__).with_name("user_models.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["user_models"] = _module
    _spec.loader.exec_module(_module)
