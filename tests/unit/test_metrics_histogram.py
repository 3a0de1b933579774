"""callrec.metrics.Histogram: buckets, sum and count as Prometheus reads them, also
through web's merge of the services' texts."""

from __future__ import annotations

import pytest

from callrec.metrics import Histogram, Registry
from services.web.prom import merge_texts


def test_observations_land_in_the_first_bucket_that_holds_them() -> None:
    histogram = Histogram("h", "help", (0.01, 0.05, 0.25))
    for value in (0.004, 0.01, 0.02, 0.3, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.01", 2), ("0.05", 3), ("0.25", 3), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(7.334)


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError):
        Histogram("h", "help", (0.05, 0.01))
    with pytest.raises(ValueError):
        Histogram("h", "help", ())


def test_rendered_as_a_prometheus_histogram_and_kept_together_by_the_merge() -> None:
    registry = Registry("signaling", "n1")
    histogram = registry.histogram("answer_seconds", "answer time", (0.01, 0.1))
    histogram.observe(0.02)
    text = registry.render()
    assert "# TYPE callrec_answer_seconds histogram" in text
    base = 'node="n1",service="signaling"'
    assert f'callrec_answer_seconds_bucket{{{base},le="0.01"}} 0' in text
    assert f'callrec_answer_seconds_bucket{{{base},le="0.1"}} 1' in text
    assert f'callrec_answer_seconds_bucket{{{base},le="+Inf"}} 1' in text
    assert f"callrec_answer_seconds_count{{{base}}} 1" in text
    assert f"callrec_answer_seconds_sum{{{base}}} 0.02" in text
    other = Registry("web", "n1")
    other.counter("requests_total", "requests").inc()
    merged = merge_texts([text, other.render()]).splitlines()
    start = merged.index("# TYPE callrec_answer_seconds histogram")
    family = merged[start + 1:start + 6]
    assert all(line.startswith("callrec_answer_seconds_") for line in family), merged
