"""The kernels' elementwise loss and gradient against float64 in ulps (bench/accuracy.py, at a smaller sweep):
float32 logits to a few ulps, 16-bit logits within one ulp of the correctly rounded value, and NaN and ±inf
exactly where torch has them."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import DEVICE

import softmargin_triton as st

_SPEC = importlib.util.spec_from_file_location(
    "accuracy", Path(__file__).resolve().parent.parent / "bench" / "accuracy.py"
)
accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(accuracy)

# Largest error in ulps where the result is a normal number (|x| <= 87): 3.3 and 3.85 over ~9·10^6 logits
# (reports/accuracy/cpu-interpreter.csv). Under the interpreter exp2 and the reciprocal are correctly
# rounded; on a GPU ex2.approx and rcp.approx (<= 2 and <= 1 ulp) add theirs (the gpu tier's bounds).
FLOAT32_ULPS = {"cpu": {"loss": 4.0, "grad": 4.0}, "cuda": {"loss": 8.0, "grad": 8.0}}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    with st.use_backend("triton"):
        return pd.DataFrame(accuracy.measure(20_000, dtypes, DEVICE))


def test_nan_and_inf_exactly_where_torch_has_them(table):
    assert (table.nonfinite_mismatches == 0).all(), table


@pytest.mark.parametrize("quantity", ["loss", "grad"])
def test_float32_within_a_few_ulps(table, quantity):
    rows = table[
        (table.logits_dtype == "float32") & (table.quantity == quantity) & (table.range == "|x| <= 87")
    ]
    assert len(rows) == 2 and (rows.points > 50_000).all()
    assert (rows.max_ulps <= FLOAT32_ULPS[DEVICE][quantity]).all(), rows


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_within_one_ulp_of_the_correctly_rounded_value(table, dtype):
    rows = table[(table.logits_dtype == dtype) & (table.range == "|x| <= 87")]
    assert len(rows) == 4 and (rows.points > 50_000).all()
    assert (rows.max_ulps <= 1).all(), rows


@pytest.mark.gpu
def test_results_below_the_normal_range_are_off_by_at_most_2_to_the_minus_126(table):
    """ex2.approx flushes e^-|x| < 2^-126 to zero (|x| > 87.3): a subnormal result may come out as 0."""
    rows = table[(table.logits_dtype == "float32") & (table.range == "|x| > 87")]
    assert (rows.max_ulps <= 2**23).all(), rows  # 2^23 float32 subnormal ulps (2^-149) are 2^-126
