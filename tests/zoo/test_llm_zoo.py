"""The generated causal-LM sweep (``tests/zoo/llm_generated.py``): every causal-LM family of the
installed ``transformers`` that builds small is discovered, pruned by magnitude / Wanda / SparseGPT
at 50 % and 2:4 to exact sparsity, scored, depth- and (where it can be) width-pruned, and still
generates.

The default run checks ``DEFAULT_LLM_FAMILIES``; every family runs in the test marked ``slow``.
Families ``scripts/llm_zoo_report.py`` last recorded as failing (``llm_status.json``, listed with
their reasons in ``docs/llm.md``) are expected failures with that reason; a recorded pass that
fails, or a family that fails without a record, fails the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.zoo.llm_generated import (
    DEFAULT_LLM_FAMILIES,
    METHODS,
    PATTERNS,
    LLMOutcome,
    check_llm_family,
    discover_causal_families,
)

STATUS_FILE = Path(__file__).with_name("llm_status.json")
RECORDED: dict[str, dict] = json.loads(STATUS_FILE.read_text(encoding="utf-8")) if STATUS_FILE.exists() else {}
FAMILIES = list(discover_causal_families())


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check(family: str) -> None:
    outcome = check_llm_family(family)
    if outcome.status == "skip":
        pytest.skip(f"{family}: {outcome.reason}")
    if outcome.status == "fail" and RECORDED.get(family, {}).get("status") == "fail":
        pytest.xfail(f"{family} (recorded in docs/llm.md): {outcome.reason}")
    assert outcome.status == "pass", f"{family}: {outcome.reason}"
    assert {(m, p) for m in outcome.ppl for p in outcome.ppl[m]} == {(m, p) for m in METHODS for p in PATTERNS}
    assert all(math.isfinite(v) and v > 1.0 for by in outcome.ppl.values() for v in by.values())


def test_the_sweep_covers_every_causal_lm_family_and_the_record_too():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert FAMILIES == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert len(FAMILIES) > 150 and set(DEFAULT_LLM_FAMILIES) <= set(FAMILIES)
    assert set(RECORDED) == set(FAMILIES)  # scripts/llm_zoo_report.py ran on this transformers


@pytest.mark.parametrize("family", DEFAULT_LLM_FAMILIES)
def test_default_family_prunes_every_way_and_still_generates(family):
    outcome = check_llm_family(family)
    assert outcome.status == "pass", f"{family}: {outcome.reason}"
    _check_values(outcome)


def _check_values(outcome: LLMOutcome) -> None:
    assert {(m, p) for m in outcome.ppl for p in outcome.ppl[m]} == {(m, p) for m in METHODS for p in PATTERNS}
    assert outcome.ppl_dense is not None and math.isfinite(outcome.ppl_dense)
    assert all(math.isfinite(v) and v > 1.0 for by in outcome.ppl.values() for v in by.values())
    assert outcome.depth.startswith("removed block") and outcome.generate == "dense and pruned"
    assert outcome.width.startswith("MLP")  # every default family width-prunes its MLP


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_causal_lm_family(family):
    _check(family)
