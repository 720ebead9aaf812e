"""``rfmdist fit``'s estimator options come from the estimators' parameter table."""

from __future__ import annotations

import argparse
import inspect

import pytest

from rfmdist import RFMRegressor
from rfmdist.cli.errors import UsageError
from rfmdist.cli.fit import register
from rfmdist.cli.options import estimator_options, estimator_params
from rfmdist.estimators import PARAMETERS


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["fit", "--train", "t.csv", "--out", "m.zarr", *argv])


def test_every_scalar_parameter_is_an_option_with_the_estimators_default():
    options = {o.param: o for o in estimator_options()}
    assert set(options) == set(PARAMETERS) - {"device"}
    signature = inspect.signature(RFMRegressor).parameters
    for name, option in options.items():
        assert option.default == signature[name].default, name
        assert option.help, name
    assert options["random_state"].flag == "--seed"


def test_options_left_out_keep_the_estimators_defaults():
    params = estimator_params(parse())
    assert RFMRegressor(**params).get_params() == RFMRegressor().get_params()


def test_option_words_become_parameter_values():
    args = parse(
        "--centers", "all", "--agop-samples", "all", "--n-iter-no-change", "none",
        "--cache-kernel", "false", "--diag", "--no-standardize", "--seed", "3",
        "--bandwidth", "2.5", "--iters", "4", "--dtype", "float32", "--validation-fraction", "0.2",
    )  # fmt: skip
    params = estimator_params(args)
    defaults = RFMRegressor().get_params()
    assert {k: v for k, v in params.items() if v != defaults[k]} == {
        "centers": None,
        "agop_samples": None,
        "n_iter_no_change": None,
        "cache_kernel": False,
        "diag": True,
        "standardize": False,
        "random_state": 3,
        "bandwidth": 2.5,
        "iters": 4,
        "dtype": "float32",
        "validation_fraction": 0.2,
    }
    assert estimator_params(parse("--centers", "500"))["centers"] == 500
    assert estimator_params(parse("--centers", "auto"))["centers"] == "auto"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (("--iters", "2.5"), ("--iters", "an int >= 0", "'2.5'")),
        (("--reg", "0"), ("--reg", "a float > 0", "'0'")),
        (("--kernel", "rbf"), ("--kernel", "'laplace' or 'gaussian'", "'rbf'")),
        (("--seed", "x"), ("--seed", "an int seed", "'x'")),
        (("--validation-fraction", "1"), ("--validation-fraction", "< 1", "'1'")),
    ],
)
def test_bad_values_are_refused_with_what_the_option_accepts(argv, fragments):
    with pytest.raises(UsageError) as err:
        estimator_params(parse(*argv))
    for fragment in fragments:
        assert fragment in str(err.value)
