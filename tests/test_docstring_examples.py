"""The examples in the ops' docstrings run and print what they show (doctest)."""
import doctest

import pytest
import torch

from specalign import ops

EXAMPLES = [test for test in doctest.DocTestFinder().find(ops, globs={"torch": torch, **vars(ops)}) if test.examples]


def test_every_op_has_an_example():
    documented = {test.name.rsplit(".", 1)[-1] for test in EXAMPLES}
    ops_with_wrappers = {"speculative_verify", "speculative_verify_probs", "sample", "sample_with_stats", "compact_rows",
                         "fork_rows", "compact_columns", "shifted_target_logits"}
    assert ops_with_wrappers <= documented, f"no example in {sorted(ops_with_wrappers - documented)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_example_runs(example):
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(example, out=print)
    assert runner.failures == 0, f"{example.name}: {runner.failures} of {runner.tries} examples failed (output above)"
