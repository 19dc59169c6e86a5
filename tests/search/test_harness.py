"""Specification of the search harness (`SearchConfig(method=...)`, `mpqjax search --method`): every method runs end to
end on the same float model, limits, fine-tune, final training and export, records its search cost, resumes, and
refuses what it cannot honour before any training."""

import csv
import json
import shutil

import pytest

from mpqjax import search
from mpqjax.search.methods import METHODS

# Tiny but real: the embedded digits, a 3-epoch float model (cached across runs), 1-epoch fine-tunes.
SMALL = dict(trials=4, n_initial=2, float_epochs=3, batch_size=128, finetune_epochs=1, final_epochs=1,
             hessian_batch_size=64, hessian_batches=1, hessian_max_probes=8, supernet_epochs=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{method: (result, folder)}`` of one small search per method, at the default size limit (6x)."""
    root = tmp_path_factory.mktemp("harness")
    cache = str(root / "cache")
    results = {}
    for name, method in METHODS.items():
        settings = dict(SMALL, method=name)
        if not method.iterative:
            settings = {key: value for key, value in settings.items() if key not in ("trials", "n_initial")}
        results[name] = (search.run(search.SearchConfig(**settings), str(root / name), cache_dir=cache),
                         root / name)
    return results


@pytest.mark.slow
def test_every_method_meets_the_limit_with_the_same_float_model(runs):
    floats = set()
    for name, (result, folder) in runs.items():
        meta = json.loads((folder / "search.json").read_text())
        assert meta["settings"]["method"] == name and meta["status"] == "finished"
        floats.add((meta["float"]["validation_accuracy"], meta["float"]["test_accuracy"]))
        best = result.best
        assert best["size_reduction_vs_fip16"] >= search.DEFAULT_SIZE_REDUCTION
        assert (folder / "model.npz").is_file() and 0 < best["test_accuracy"] <= 1
        for record in result.trials:
            assert record["feasible"] and record["status"] == "ok"
    assert len(floats) == 1  # one float model (trained once, then read from the cache) for every method


@pytest.mark.slow
def test_iterative_methods_search_widths_and_one_shot_methods_fine_tune_their_own_configurations(runs):
    tpe, _ = runs["kmeans_tpe"]
    random, _ = runs["random"]
    assert [t["phase"] for t in tpe.trials] == ["random", "random", "model", "model"]
    assert [t["phase"] for t in random.trials] == ["random"] * 4
    for name in ("uniform", "hawq_ilp", "rd_layers", "rd_channels"):
        result, folder = runs[name]
        meta = json.loads((folder / "search.json").read_text())
        assert meta["method"] == {"name": name, "proposals": len(result.trials)}
        assert all(t["phase"] == name for t in result.trials)
        # widths 1, but for the channels rd_channels prunes (a layer's width is then its kept fraction)
        assert all(t["widths"] == [1.0] * 4 or (name == "rd_channels" and max(t["widths"]) <= 1.0)
                   for t in result.trials)
        assert meta["space"]["pruned"] is False
    assert [t["bits"][0] for t in runs["uniform"][0].trials] == [2]  # only 2 bits everywhere is 6x below FiP16
    assert (runs["hawq_ilp"][1] / "hessian.json").is_file()  # its traces
    assert not (runs["rd_layers"][1] / "hessian.json").exists()


@pytest.mark.slow
def test_a_channel_wise_result_is_costed_trained_and_exported_per_channel(runs, tmp_path, capsys):
    from mpqjax import cli, cost, export, nn

    result, folder = runs["rd_channels"]
    best = result.best
    (trial,) = result.trials
    assert best["channel_bits"] == trial["channel_bits"]
    table = nn.models.layer_table("digits_cnn")
    assert list(best["channel_bits"]) == list(table.names)
    bits = [row["bits"] for row in best["layers"]]
    assert bits == trial["bits"]
    for layer, layer_bits in zip(table, bits, strict=True):
        row = best["channel_bits"][layer.name]
        assert len(row) == layer.out_channels and max(row) == layer_bits  # activations at the widest channel's
    rows = [[b for b in best["channel_bits"][name] if b] for name in table.names]  # 0: pruned
    widths = [row["width"] for row in best["layers"]]
    assert widths == pytest.approx([len(row) / layer.out_channels for row, layer in zip(rows, table, strict=True)])
    size = cost.channel_cost(table, bits, widths, rows, cost.load_target("fpga")).size_bytes
    assert best["size_bytes"] == pytest.approx(float(size)) and best["size_reduction_vs_fip16"] >= 6.0
    assert export.load_program(folder / "model.npz").metadata["channel_bits"] == best["channel_bits"]
    with open(folder / "trials.csv", newline="") as file:
        (row,) = csv.DictReader(file)
    assert json.loads(row["channel_bits"]) == best["channel_bits"]  # one JSON cell
    report = (folder / "report.md").read_text()
    assert "| trials | 1 of 1 planned (1 rd_channels)" in report
    share = result.search_cost["training_share"]
    assert (f"| search method | rd_channels: {result.search_cost['seconds']:.1f} s, 1 fine-tune (cpu), "
            f"{100 * share:.1f} % of the trials' time in training steps |") in report
    # the integer model holds each channel at its own bit-width and predicts as the trained model does
    assert cli.main(["export", str(folder), "--format", "integer", "--out", str(tmp_path / "int.npz")]) == 0
    layers = export.load_program(tmp_path / "int.npz").metadata["integer"]["layers"]
    for layer in layers:
        held = best["channel_bits"][layer["name"]]
        assert {bits: len(channels) for bits, channels in layer["weight_groups"]} == {
            bits: held.count(bits) for bits in set(held) - {0}}  # a pruned channel is not stored
    capsys.readouterr()
    assert cli.main(["export", str(folder), "--format", "qwix", "--out", str(tmp_path / "rules.py")]) == 2
    assert "Qwix rules give one bit-width per layer" in capsys.readouterr().err
    assert not (tmp_path / "rules.py").exists()
    assert cli.main(["train", "--config", str(folder / "best_config.json"), "--out", str(tmp_path / "again")]) == 2
    assert "mpqjax train takes per-layer bit-widths" in capsys.readouterr().err


@pytest.mark.slow
def test_the_search_cost_is_recorded_next_to_the_result(runs):
    for name, (result, folder) in runs.items():
        cost = result.search_cost
        assert cost["method"] == name and cost["backend"] == "cpu"
        assert cost["finetunes"] == len(result.trials)
        parts = [cost[f"{phase}_seconds"] for phase in ("hessian", "method", "evaluations", "optimiser")]
        assert cost["seconds"] == pytest.approx(sum(parts)) and cost["evaluations_seconds"] > 0
        assert json.loads((folder / "search.json").read_text())["search_cost"] == cost
        # each trial's training steps are part of its time; the run adds them up
        assert all(0 < trial["training_seconds"] < trial["seconds"] for trial in result.trials)
        assert cost["training_steps_seconds"] == pytest.approx(sum(t["training_seconds"] for t in result.trials))
        assert cost["training_share"] == pytest.approx(
            cost["training_steps_seconds"] / sum(t["seconds"] for t in result.trials))
    assert runs["rd_layers"][0].search_cost["method_seconds"] > 0
    assert runs["hawq_ilp"][0].search_cost["hessian_seconds"] > 0


@pytest.mark.slow
def test_the_relaxed_methods_train_a_supernet_and_fine_tune_its_configuration_fitted_to_the_limit(runs):
    widths = set(search.SearchConfig().widths)
    for name in ("mixprec", "dnas"):
        result, folder = runs[name]
        method = json.loads((folder / "search.json").read_text())["method"]
        assert method["name"] == name and method["proposals"] == 1
        supernet = method["supernet"]
        assert supernet["steps"] > 0 and set(supernet["multipliers"]) == {"size_bytes"}
        assert set(supernet["fitted"]) == {"lowered", "raised"}
        (trial,) = result.trials
        assert trial["phase"] == name and trial["feasible"] and result.search_cost["method_seconds"] > 0
    mixprec, dnas = runs["mixprec"][0].trials[0], runs["dnas"][0].trials[0]
    assert list(mixprec["channel_bits"]) == ["conv1", "conv2", "conv3", "head"]
    assert 0 not in mixprec["channel_bits"]["head"]  # a class is never pruned
    assert "channel_bits" not in dnas and set(dnas["widths"][:3]) <= widths and dnas["widths"][3] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_a_relaxed_method_s_configuration_exports_as_an_integer_model_that_predicts_as_the_trained_one(
        runs, tmp_path, method):
    import numpy as np

    from mpqjax import cli, data, export

    result, folder = runs[method]
    assert cli.main(["export", str(folder), "--format", "integer", "--out", str(tmp_path / "int.npz")]) == 0
    trained, integer = export.load_program(folder / "model.npz"), export.load_program(tmp_path / "int.npz")
    assert trained.metadata.get("channel_bits") == result.best.get("channel_bits")
    digits = data.load_digits_splits(0)
    pixels = np.clip(np.round(digits.test.x * digits.std + digits.mean), 0, 255).astype(np.uint8)  # what it reads
    agree = np.mean(np.argmax(integer(pixels), -1) == np.argmax(trained(digits.test.x), -1))
    assert agree >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_a_relaxed_search_is_the_same_for_a_seed(runs, tmp_path, method):
    settings = {key: value for key, value in SMALL.items() if key not in ("trials", "n_initial")}
    result, _ = runs[method]
    again = search.run(search.SearchConfig(**settings, method=method), str(tmp_path / "again"))
    assert again.best == result.best
    assert [{k: v for k, v in t.items() if k not in search.TIME_FIELDS} for t in again.trials] == [
        {k: v for k, v in t.items() if k not in search.TIME_FIELDS} for t in result.trials]


def test_a_diverging_supernet_fails_the_search_with_its_reason_and_writes_nothing(tmp_path):
    settings = {key: value for key, value in SMALL.items() if key not in ("trials", "n_initial")}
    out = tmp_path / "run"
    config = search.SearchConfig(**settings, method="mixprec", finetune_learning_rate=1e30)
    with pytest.raises(ValueError, match="mixprec: the supernet's training diverged at step"):
        search.run(config, str(out))
    assert not out.exists()


@pytest.mark.slow
def test_a_finished_one_shot_search_resumes_to_the_same_result(runs):
    result, folder = runs["hawq_ilp"]
    settings = {key: value for key, value in SMALL.items() if key not in ("trials", "n_initial")}
    again = search.run(search.SearchConfig(**settings, method="hawq_ilp"), str(folder), resume=True)
    assert again.best == result.best


@pytest.mark.slow
def test_a_one_shot_search_killed_after_its_trials_resumes_without_computing_its_proposals_again(runs, tmp_path,
                                                                                                 monkeypatch):
    from mpqjax.search import supernet

    result, finished = runs["mixprec"]
    folder = tmp_path / "killed"
    shutil.copytree(finished, folder)
    # as a kill during the final training leaves it: the trial logged, no best configuration, status running
    (folder / "best_config.json").unlink()
    meta = json.loads((folder / "search.json").read_text())
    (folder / "search.json").write_text(json.dumps({**meta, "status": "running"}))

    def no_supernet(*args, **kwargs):
        raise AssertionError("the supernet was trained again")

    monkeypatch.setattr(supernet, "train_supernet", no_supernet)
    settings = {key: value for key, value in SMALL.items() if key not in ("trials", "n_initial")}
    again = search.run(search.SearchConfig(**settings, method="mixprec"), str(folder), resume=True)
    assert again.best == result.best and again.trials == result.trials
    resumed = json.loads((folder / "search.json").read_text())
    assert resumed["method"] == meta["method"]  # the supernet's record, as the first session wrote it
    assert resumed["search_cost"]["method_seconds"] == meta["search_cost"]["method_seconds"]


@pytest.mark.parametrize("settings, message", [
    (dict(method="bayes"), "method must be one of kmeans_tpe, random, uniform, hawq_ilp, rd_layers, rd_channels, "
                           "mixprec, dnas, got 'bayes'"),
    (dict(method="mixprec", min_size_reduction=None), "method mixprec trades accuracy against a limit: give one"),
    (dict(method="dnas", min_size_reduction=None), "method dnas trades accuracy against a limit: give one"),
    (dict(method="mixprec", bits=(16, 8, 4)), r"method mixprec quantises weights channel by channel at 2 to 8 bits: "
                                              r"leave \[16\] out of bits and fixed_bits"),
    (dict(method="mixprec", fixed_bits=(("conv1", 16),)), r"leave \[16\] out"),
    (dict(method="mixprec", widths=(0.5, 1.0)), "method mixprec chooses bit-widths only .*widths cannot apply"),
    (dict(method="hawq_ilp", widths=(0.5, 1.0)), "method hawq_ilp chooses bit-widths only .*widths cannot apply"),
    (dict(method="rd_layers", max_latency_seconds=1e-3),
     "method rd_layers allocates under one limit, got the size limit and the latency limit"),
    (dict(method="rd_layers", max_bops=1e8), "got the size limit and the bit-operations limit"),
    (dict(method="rd_channels", min_size_reduction=None, max_latency_seconds=1e-3),
     "method rd_channels allocates under the size limit alone, got the latency limit"),
    (dict(method="rd_channels", min_size_reduction=None), "rd_channels allocates under the size limit alone, got no "
                                                          "limit"),
])
def test_settings_a_method_cannot_honour_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        search.SearchConfig(**settings).validate()


def test_a_bits_only_method_takes_width_one_as_given():
    search.SearchConfig(method="hawq_ilp", widths=(1.0,)).validate()
    search.SearchConfig(method="rd_layers", min_size_reduction=None, max_latency_seconds=1e-3).validate()


@pytest.mark.parametrize("method", ["uniform", "hawq_ilp", "rd_layers", "rd_channels"])
def test_a_limit_no_allocation_meets_fails_before_anything_is_written(tmp_path, method):
    out = tmp_path / "run"
    config = search.SearchConfig(**{k: v for k, v in SMALL.items() if k not in ("trials", "n_initial")},
                                 method=method, min_size_reduction=7.8)  # 2 bits everywhere at width 1: 7.69x
    with pytest.raises(ValueError, match="the smallest possible size is .* above the limit"):
        search.run(config, str(out))
    assert not out.exists()
