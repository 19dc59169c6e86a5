"""Specification of the mpqjax.export face: every public name of its modules, flat."""

from mpqjax import export

MODULES = ("archive", "bitpack", "deployable", "fixed_point", "integer", "lowering", "onnx", "program", "qwix")


def test_face_exports_every_public_name_of_its_modules():
    for module_name in MODULES:
        module = getattr(export, module_name)
        for name in module.__all__:
            assert getattr(export, name) is getattr(module, name), name
            assert name in export.__all__
    assert set(export.__all__) == set(MODULES).union(*(getattr(export, name).__all__ for name in MODULES))
