"""Specification of the `mpqjax.cost` package face: every name re-exported flat, and no Flax or optax imported."""

import subprocess
import sys

from mpqjax import cost as cost_model


def test_every_public_name_of_the_modules_is_reachable_from_the_package():
    for module_name in ("packing", "targets", "model", "channels", "report"):
        module = getattr(cost_model, module_name)
        for name in module.__all__:
            assert getattr(cost_model, name) is getattr(module, name), name
            assert name in cost_model.__all__ and name in dir(cost_model), name


def test_importing_and_using_the_cost_model_imports_neither_flax_nor_optax():
    script = (
        "import sys\n"
        "import mpqjax.cost as cost_model\n"
        "from mpqjax.nn.table import LayerSpec, LayerTable\n"
        "table = LayerTable((LayerSpec('conv', 'conv', 3, 8, kernel=(3, 3), out_hw=(4, 4)),))\n"
        "cost_model.cost_report(table, 4, 1.0, 'fpga')\n"
        "cost_model.channel_cost(table, [4], [1.0], [[2, 4, 4, 8, 8, 8, 8, 8]])\n"
        "print([name for name in ('flax', 'optax') if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
