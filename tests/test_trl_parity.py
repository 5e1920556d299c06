"""tfpg's GRPO and RLOO against TRL 1.16's trainer code on one fixed batch, without
torch: tests/data/trl_parity/ holds the batch, the tiny GPT-2's weights, and TRL's
losses and gradients of each configuration, written by
`benchmarks/trl_parity.py --write-fixtures` (TRL's own `_generate_and_score_completions`
and `_compute_loss`, only the sampling replaced)."""

import json
import os

import numpy as np
import pytest

import trl_parity_case

pytest.importorskip("keras_hub")

DATA = os.path.join(os.path.dirname(__file__), "data", "trl_parity")


@pytest.fixture(scope="module")
def fixtures():
    with open(os.path.join(DATA, "configs.json")) as file:
        setup = json.load(file)
    batch = dict(np.load(os.path.join(DATA, "batch.npz")))
    count = len([k for k in batch if k.startswith("w")])
    weights = [batch[f"w{i}"] for i in range(count)]
    reference = [batch[f"r{i}"] for i in range(count)]
    trl = dict(np.load(os.path.join(DATA, "trl.npz")))
    return setup, batch, weights, reference, trl


def trl_results(setup, trl, name):
    index = [c["name"] for c in setup["configs"]].index(name)
    return [(float(trl[f"c{index}_s{s}_loss"]), trl[f"c{index}_s{s}_grad"])
            for s in range(setup["configs"][index]["steps"])]


def test_every_configuration_matches_trl(fixtures):
    """Loss and every parameter's gradient within 1e-6 of TRL's (float32), each
    step; RLOO's one-step loss value is a different surrogate with the same
    gradient (the row's note says so)."""
    setup, batch, weights, reference, trl = fixtures
    assert len(setup["configs"]) >= 30
    models = trl_parity_case.build_models(setup)
    for config in setup["configs"]:
        expected = trl_results(setup, trl, config["name"])
        mine = trl_parity_case.run_row(config, setup, batch, weights, reference, models)
        loss, gradient, _ = trl_parity_case.compare(expected, mine)
        assert gradient <= 1e-6, (config["name"], gradient)
        if not config["note"]:
            assert loss <= 1e-6, (config["name"], loss)
        assert max(float(np.max(np.abs(g))) for _, g in expected) > 1e-2   # not vacuous


@pytest.mark.parametrize("name,without", [
    ("grpo beta 0.04 bias-corrected KL", "grpo beta 0.04 plain k3"),
    ("dapo beta 0.04 bias-corrected KL", "dapo beta 0.04 plain k3"),
    ("delta 1.05 num_iterations 2", "grpo num_iterations 2"),
    ("off_policy_mask_threshold 0.01 num_iterations 2", "dapo num_iterations 2, clip-higher"),
    ("normalize_then_sum (GDPO)", "sum_then_normalize, 2 objectives"),
    ("rloo normalize_advantages", "rloo"),
])
def test_each_option_changes_trls_gradient(fixtures, name, without):
    """Each pair of rows differs in one option only, and TRL's gradients differ by far
    more than the 1e-6 parity: the rows exercise their options (the second step's
    ratios do move past delta and the mask's threshold), so the parity above is
    not vacuous."""
    setup, _, _, _, trl = fixtures
    options = {c["name"]: c["options"] for c in setup["configs"]}
    differing = set(options[name].items()) ^ set(options[without].items())
    assert len({key for key, _ in differing}) == 1, differing
    step = trl_results(setup, trl, name)[-1][1]
    assert np.max(np.abs(step - trl_results(setup, trl, without)[-1][1])) > 1e-4
