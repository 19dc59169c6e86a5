"""Specification of bad input across the ``mpqjax`` commands: every invocation below exits with code 2 and one line on
stderr, without a traceback, before any float model is trained, and leaves an existing run folder byte for byte as
it was (a new ``--out`` is not created). Each check the search can make before training has a test of its own."""

import os
import subprocess
import sys

import pytest

from mpqjax import cli, search
from mpqjax.search import steps

# A finished run to name in invocations: as small as a real search gets (no pruning, two trials, one epoch each).
TINY = dict(model="mlp", trials=2, n_initial=2, float_epochs=1, batch_size=128, finetune_epochs=1, final_epochs=1,
            prune=False)

SEARCH = [
    (["--fix-bits", "conv1=99"], "--fix-bits: layer 'conv1': bit-width must be an integer in [2, 16]"),
    (["--fix-bits", "conv1=8,conv1=4"], "--fix-bits: layers fixed twice: conv1"),
    (["--fix-bits", "conv9=8"], "fixed_bits names unknown layers ['conv9']"),
    (["--max-size", "8.5kB"], "the smallest possible size after any Hessian pruning is 8.618 kB, above the limit"),
    (["--max-size", "1kB"], "the smallest possible size is 8.45 kB, above the limit 1 kB"),
    (["--max-size", "10kB", "--fix-bits", "conv3=8"], "with conv3 at least 8 bits ({8})"),
    (["--max-energy", "1e-12"], "the smallest possible energy is"),
    (["--min-throughput", "1e12"], "the highest possible throughput is"),
    (["--max-size", "16kB", "--min-size-reduction", "4"], "--max-size and --min-size-reduction both set the size "
                                                          "limit: give one"),
    (["--max-latency", "2us", "--min-speedup", "3"], "--max-latency and --min-speedup both set the latency limit"),
    (["--trials", "5", "--n-initial", "100"], "--n-initial 100 exceeds --trials=5: every trial would be random"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
    (["--seed", "4294967296"], "--seed must be an integer in [0, 2**32 - 1], got 4294967296"),
    (["--params", "PARAMS", "--float-epochs", "3"], "--float-epochs has no effect with --params"),
    (["--no-prune", "--hessian-tol", "0.1"], "--hessian-tol has no effect with --no-prune"),
    (["--no-prune", "--bit-sets", "8,6;4,2", "--log-scale"], "--bit-sets and --log-scale have no effect with "
                                                             "--no-prune"),
    (["--baseline-bits", "8,4"], "--baseline-bits has no effect without --baseline"),
    (["--data-dir", "NEW"], "--data-dir has no effect with the digits dataset: it is embedded"),
    (["--strategy", "vmap"], "--strategy has no effect with a population of 1"),
    (["--bit-sets", "8,8;4,2"], "--bit-sets: a set names a bit-width twice, got [8, 8]"),
    (["--bits", "8,8,4"], "--bits must name one or more distinct bit-widths"),
    (["--widths", "1,1"], "--widths must name distinct width multipliers"),
    (["--batch-size", "5000"], "batch_size 5000 exceeds the 1257 training examples of digits"),
    (["--hessian-batch-size", "5000"], "hessian_batch_size 5000 exceeds the 1257 training examples of digits"),
    (["--population", "8", "--trials", "4"], "--population 8 exceeds --trials=4"),
    (["--no-size-limit", "--min-size-reduction", "4"], "--no-size-limit contradicts"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--trials", "0"], "--trials must be a positive integer, got 0"),
    (["--method", "mixprec", "--bits", "16,8,4"], "--method mixprec quantises weights channel by channel at 2 to 8 "
                                                  "bits: leave [16] out of --bits and --fix-bits"),
    (["--method", "dnas", "--no-size-limit"], "--method dnas trades accuracy against a limit: give one"),
    (["--method", "mixprec", "--cost-strength", "-1"], "--cost-strength must be a non-negative number, got -1"),
    (["--method", "dnas", "--supernet-epochs", "0"], "--supernet-epochs must be a positive integer, got 0"),
    (["--method", "hawq_ilp", "--arch-lr", "0.1"], "--arch-lr has no effect without --method mixprec or dnas"),
]
RESUME = [  # a search resumed with bad settings: refused before the folder is read
    (["--resume", "--trials", "5", "--n-initial", "100"], "--n-initial 100 exceeds --trials=5"),
    (["--resume", "--max-size", "16kB", "--min-size-reduction", "4"], "both set the size limit"),
    (["--resume", "--seed", "-1"], "--seed must be an integer"),
    (["--resume", "--fix-bits", "conv1=99"], "--fix-bits: layer 'conv1'"),
    (["--resume", "--strategy", "scan"], "--strategy has no effect"),
]
OTHERS = [
    (["train", "--config", "RUN/best_config.json", "--bits", "8", "--out", "NEW"], "--config gives the configuration"),
    (["train", "--config", "RUN/best_config.json", "--widths", "1", "--out", "NEW"], "it takes no --bits or --widths"),
    (["train", "--float", "--target", "generic", "--out", "NEW"], "--target has no effect with --float"),
    (["train", "--float", "--calibration", "max", "--out", "NEW"], "--calibration has no effect with --float"),
    (["train", "--float", "--params", "PARAMS", "--out", "NEW"], "--params gives one already"),
    (["train", "--bits", "4", "--params", "PARAMS", "--float-epochs", "2", "--out", "NEW"],
     "--float-epochs has no effect with --params"),
    (["train", "--bits", "4", "--seed", "-1", "--out", "NEW"], "--seed must be an integer"),
    (["train", "--bits", "4", "--batch-size", "5000", "--out", "NEW"], "batch_size 5000 exceeds"),
    (["train", "--bits", "4", "--out", "RUN"], "already holds a trained model"),
    (["train", "--out", "NEW"], "give --config or --bits"),
    (["hessian", "--params", "PARAMS", "--batch-size", "32", "--out", "NEW"], "--batch-size has no effect with "
                                                                              "--params"),
    (["hessian", "--params", "PARAMS", "--epochs", "3", "--out", "NEW"], "--epochs has no effect with --params"),
    (["hessian", "--params", "RUN/float_params.msgpack", "--weight-decay", "0", "--out", "RUN"],
     "--weight-decay has no effect with --params"),
    (["hessian", "--fix-bits", "conv1=99", "--out", "NEW"], "--fix-bits: layer 'conv1'"),
    (["hessian", "--seed", "-1", "--out", "NEW"], "--seed must be an integer"),
    (["hessian", "--hessian-batch-size", "5000", "--out", "NEW"], "hessian_batch_size 5000 exceeds"),
    (["cost", "--model", "nope"], "unknown model 'nope'"),
    (["cost", "--model", "digits_cnn", "--bits", "99"], "bit-width must be an integer in [2, 16]"),
    (["cost", "--model", "digits_cnn", "--bits", "8,8"], "bits has 2 entries but model 'digits_cnn' has 4"),
    (["cost", "--model", "digits_cnn", "--target", "nowhere.json"], "target file not found: nowhere.json"),
    (["cost"], "the following arguments are required: --model"),
    (["report", "NEW"], "is not a folder"),
    (["report", "RUN", "extra"], "unrecognized arguments: extra"),
    (["report"], "the following arguments are required: out_dir"),
    (["export", "NEW"], "does not exist"),
    (["export", "RUN", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["export", "RUN", "--out", "NEW/model_int.npz"], "does not exist"),
    (["export"], "the following arguments are required: run_dir"),
]
CASES = ([(["search", *argv, "--out", "NEW"], message) for argv, message in SEARCH]
         + [(["search", *argv, "--out", "RUN"], message) for argv, message in RESUME] + OTHERS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished search folder (`TINY`)."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    search.run(search.SearchConfig(**TINY), str(out))
    return out


def _snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture
def no_float_model(monkeypatch, run_dir):
    """The float step fails the test if called: every check here must come before any training."""

    def fail(*args, **kwargs):
        raise AssertionError("a float model was loaded or trained before the input was refused")

    monkeypatch.setattr(steps, "float_model", fail)
    monkeypatch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")  # keep the process's JAX configuration as it is


def _invoke(argv, run_dir, tmp_path):
    """``argv`` with RUN (the finished folder), NEW (a fresh --out) and PARAMS (a garbage checkpoint) filled in."""
    (tmp_path / "garbage.msgpack").write_bytes(b"not a checkpoint")
    fill = {"RUN": str(run_dir), "NEW": str(tmp_path / "new"), "PARAMS": str(tmp_path / "garbage.msgpack")}
    return [fill.get(arg, arg.replace("RUN/", f"{run_dir}/")) for arg in argv]


def _assert_refused(code, err, message, before, run_dir, tmp_path):
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert _snapshot(run_dir) == before  # the existing folder: every file byte for byte
    assert not (tmp_path / "new").exists()  # a new --out: not created
    assert sorted(os.listdir(tmp_path)) == ["garbage.msgpack"]  # nothing written beside it (default outputs)


def test_there_are_forty_bad_invocations_or_more_across_every_command():
    assert len(CASES) >= 40
    assert {argv[0] for argv, _ in CASES} == {"search", "train", "hessian", "cost", "report", "export"}


@pytest.mark.slow  # the run folder it names is a real (tiny) search
@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_bad_input_exits_2_in_one_line_before_training_and_leaves_folders_alone(argv, message, run_dir, tmp_path,
                                                                                 monkeypatch, capsys, no_float_model):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(run_dir)
    code = cli.main(_invoke(argv, run_dir, tmp_path))
    _assert_refused(code, capsys.readouterr().err, message, before, run_dir, tmp_path)


# -- each check the search can make before training, on its own ---------------------------------------------------


def _refused(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.msgpack").write_bytes(b"")
    assert cli.main([*argv, "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["garbage.msgpack"]


@pytest.fixture
def untrained(monkeypatch):
    """The float step fails the test if called."""
    monkeypatch.setattr(steps, "float_model", lambda *args, **kwargs: pytest.fail("a float model was needed"))
    monkeypatch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")


def test_fixed_bits_outside_the_bit_widths_are_refused_before_training(tmp_path, monkeypatch, capsys, untrained):
    _refused(["search", "--fix-bits", "conv1=99"], "mpqjax search: error: --fix-bits: layer 'conv1': bit-width must "
             "be an integer in [2, 16] (16: not quantised), got 99", tmp_path, monkeypatch, capsys)
    _refused(["hessian", "--fix-bits", "head=1"], "--fix-bits: layer 'head': bit-width must be an integer", tmp_path,
             monkeypatch, capsys)


def test_a_size_limit_no_pruning_can_meet_is_refused_before_training(tmp_path, monkeypatch, capsys, untrained):
    _refused(["search", "--max-size", "8.5kB"], "the smallest possible size after any Hessian pruning is 8.618 kB, "
             "above the limit 8.5 kB: each of the 4 sensitivity clusters gets a layer, so at best conv1 at least 6 "
             "bits ({8, 6}), head at least 3 bits ({6, 4, 3}); relax the limit, give the most sensitive clusters "
             "fewer bits (bit sets) or search without pruning", tmp_path, monkeypatch, capsys)


def test_a_limit_given_two_ways_is_refused(tmp_path, monkeypatch, capsys, untrained):
    _refused(["search", "--max-size", "16kB", "--min-size-reduction", "6"], "--max-size and --min-size-reduction "
             "both set the size limit: give one", tmp_path, monkeypatch, capsys)
    _refused(["search", "--max-latency", "2us", "--min-speedup", "3"], "--max-latency and --min-speedup both set the "
             "latency limit: give one", tmp_path, monkeypatch, capsys)


def test_more_random_trials_than_trials_are_refused_when_asked_for(tmp_path, monkeypatch, capsys, untrained):
    _refused(["search", "--trials", "5", "--n-initial", "100"], "--n-initial 100 exceeds --trials=5: every trial "
             "would be random; give at most 5, or leave it out (its default is capped at --trials)", tmp_path,
             monkeypatch, capsys)


def test_train_refuses_bits_next_to_a_configuration_file(tmp_path, monkeypatch, capsys, untrained):
    _refused(["train", "--config", "best_config.json", "--bits", "8"], "mpqjax train: error: --config gives the "
             "configuration (its bits and widths): it takes no --bits or --widths", tmp_path, monkeypatch, capsys)


def test_the_python_api_makes_the_same_checks_before_training(tmp_path, untrained):
    for settings, message in [(dict(max_size_bytes=8.5e3, min_size_reduction=None), "after any Hessian pruning"),
                              (dict(fixed_bits=(("conv1", 99),)), "fixed_bits: layer 'conv1'"),
                              (dict(trials=5, n_initial=100), "n_initial 100 exceeds trials=5"),
                              (dict(seed=-1), "seed must be an integer")]:
        with pytest.raises(ValueError, match=message):
            search.run(search.SearchConfig(**settings), str(tmp_path / "new"))
        assert not (tmp_path / "new").exists()


# -- end to end: the installed command in a process of its own ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["search", "--max-size", "8.5kB"], "after any Hessian pruning"),
    (["search", "--fix-bits", "conv1=99"], "--fix-bits: layer 'conv1'"),
    (["search", "--trials", "5", "--n-initial", "100"], "--n-initial 100 exceeds --trials=5"),
    (["train", "--config", "best_config.json", "--bits", "8"], "--config gives the configuration"),
    (["search", "--seed", "-1"], "--seed must be an integer"),
])
def test_a_real_process_prints_one_line_and_trains_nothing(argv, message, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "MPQJAX_CACHE_DIR": str(cache), "MPQJAX_NO_COMPILATION_CACHE": "1",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla")}
    done = subprocess.run([sys.executable, "-m", "mpqjax.cli", *argv, "--out", str(tmp_path / "new")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "new").exists() and not (cache / "float").exists()  # no float model trained or cached
