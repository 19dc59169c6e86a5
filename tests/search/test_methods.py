"""Specification of mpqjax.search.methods: the registry of the harness's search methods and what each one
chooses."""

from mpqjax.search import methods
from mpqjax.search.config import SearchConfig


def test_every_method_is_registered_with_what_it_searches():
    assert list(methods.METHODS) == ["kmeans_tpe", "random", "uniform", "hawq_ilp", "rd_layers", "rd_channels",
                                     "mixprec", "dnas"]
    assert methods.DEFAULT_METHOD == SearchConfig().method == "kmeans_tpe"
    assert [name for name, m in methods.METHODS.items() if m.iterative] == ["kmeans_tpe", "random"]
    assert [name for name, m in methods.METHODS.items() if m.searches_widths] == ["kmeans_tpe", "random", "dnas"]
    assert [name for name, m in methods.METHODS.items() if m.uses_hessian] == ["hawq_ilp"]
    assert [name for name, m in methods.METHODS.items() if m.relaxed] == ["mixprec", "dnas"]


def test_the_hessian_runs_to_prune_an_iterative_search_or_for_a_method_that_reads_it():
    assert methods.runs_hessian(SearchConfig()) and methods.prunes(SearchConfig())
    assert not methods.runs_hessian(SearchConfig(prune=False))
    assert methods.runs_hessian(SearchConfig(method="hawq_ilp")) and not methods.prunes(SearchConfig(method="hawq_ilp"))
    assert not methods.runs_hessian(SearchConfig(method="rd_channels"))
