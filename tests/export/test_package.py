"""Specification of the mpqjax.export face: every public name of its modules, flat."""

from mpqjax import export


def test_face_exports_every_public_name_of_its_modules():
    for module_name in ("archive", "integer", "program"):
        module = getattr(export, module_name)
        for name in module.__all__:
            assert getattr(export, name) is getattr(module, name), name
            assert name in export.__all__
    assert set(export.__all__) == {"archive", "integer", "program", *export.archive.__all__,
                                   *export.integer.__all__, *export.program.__all__}
