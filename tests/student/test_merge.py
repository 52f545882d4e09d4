import numpy as np
import pytest

from pantheon import MergeError, Ragged
from pantheon._student import build_plan, merge_batches

NAMES = ["teacher 0", "teacher 1", "teacher 2"]


def _desc(**fields):
    return {k: {"shape": [-1, *s], "dtype": d, "lod_level": 0} for k, (s, d) in fields.items()}


def test_merged_keys_are_first_teachers_then_new_keys_in_order():
    d1 = _desc(x=([1], "int64"), a=([1], "int64"), result=([1], "int64"))
    d2 = _desc(b=([1], "int64"), result=([1], "int64"))
    plan = build_plan([d1, d2], NAMES[:2], {"result": "sum"})
    assert list(plan.desc) == ["x", "a", "result", "b"]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("sum", [4.0, 8.0]),
        ("mean", [2.0, 4.0]),
        ("max", [3.0, 5.0]),
        ("min", [1.0, 3.0]),
        (("mean", [3, 1]), [1.5, 3.5]),
        ({"weighted_mean": [1, 3]}, [2.5, 4.5]),
        (lambda vs: vs[0] * vs[1], [3.0, 15.0]),
    ],
)
def test_strategies(strategy, expected):
    d = _desc(r=([1], "float32"))
    plan = build_plan([d, d], NAMES[:2], {"r": strategy})
    out = merge_batches(
        plan,
        [{"r": np.array([[1.0], [3.0]], np.float32)}, {"r": np.array([[3.0], [5.0]], np.float32)}],
        NAMES,
    )
    assert out["r"].dtype == np.float32
    assert out["r"].ravel().tolist() == expected


def test_integer_results_are_cast_back_to_the_description_dtype():
    d = _desc(r=([1], "int64"))
    plan = build_plan([d, d], NAMES[:2], {"r": "mean"})
    x = np.arange(5).reshape(-1, 1)
    out = merge_batches(plan, [{"r": 2 * x - 1}, {"r": 2 * x + 1}], NAMES)
    assert out["r"].dtype == np.int64
    assert np.array_equal(out["r"], 2 * x)


def test_inputs_are_not_modified_by_merging():
    d = _desc(r=([2], "float32"))
    plan = build_plan([d, d], NAMES[:2], {"r": "sum"})
    a = np.ones((3, 2), np.float32)
    merge_batches(plan, [{"r": a}, {"r": a}], NAMES)
    assert (a == 1).all()


def test_ragged_fields_merge_values_when_lengths_agree():
    d = {"s": {"shape": [-1, -1], "dtype": "float32", "lod_level": 1}}
    plan = build_plan([d, d], NAMES[:2], {"s": "sum"})
    r1 = Ragged.from_list([np.ones(2, np.float32), np.ones(1, np.float32)])
    out = merge_batches(plan, [{"s": r1}, {"s": r1}], NAMES)
    assert out["s"].values.tolist() == [2.0, 2.0, 2.0]
    r2 = Ragged.from_list([np.ones(1, np.float32), np.ones(2, np.float32)])
    with pytest.raises(MergeError, match="lengths"):
        merge_batches(plan, [{"s": r1}, {"s": r2}], NAMES)


def test_shared_key_without_strategy_names_key_and_teachers():
    d = _desc(result=([1], "int64"))
    with pytest.raises(
        MergeError, match=r"'result' is produced by 2 teachers \(teacher 0, teacher 1\)"
    ):
        build_plan([d, d], NAMES[:2], None)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("median", "unknown merge strategy 'median'"),
        (("mean", [1.0]), "1 weights but 2 teachers"),
        (("mean", [0, 0]), "not all zero"),
        (42, "cannot read merge strategy"),
    ],
)
def test_bad_strategies(strategy, message):
    d = _desc(r=([1], "float32"))
    with pytest.raises(MergeError, match=message):
        build_plan([d, d], NAMES[:2], {"r": strategy})


def test_shared_key_with_different_shapes_is_refused():
    with pytest.raises(MergeError, match="same shape"):
        build_plan([_desc(r=([1], "float32")), _desc(r=([2], "float32"))], NAMES[:2], {"r": "sum"})
