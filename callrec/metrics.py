"""A tiny Prometheus registry: each service renders its own text, web concatenates.

prometheus_client's multi-process mode needs a shared directory and cannot span
services talking over NATS; counters here are plain ints, cheap on hot paths.
"""

from __future__ import annotations

from collections.abc import Callable


class Counter:
    __slots__ = ("help", "name", "values")

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


class Gauge:
    __slots__ = ("func", "help", "name", "values")

    def __init__(
        self, name: str, help_text: str, func: Callable[[], float] | None = None
    ) -> None:
        self.name = name
        self.help = help_text
        self.func = func
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value


class Histogram:
    """Observations counted into fixed buckets (upper bounds, ascending), with their sum:
    what a percentile over time needs (Prometheus' histogram_quantile), at the cost of
    a short scan per observation."""

    __slots__ = ("bounds", "count", "counts", "help", "name", "sum")

    def __init__(self, name: str, help_text: str, bounds: tuple[float, ...]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name}: bucket bounds must ascend: {bounds}")
        self.name = name
        self.help = help_text
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
                return

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations at or under it), +Inf last, as Prometheus exposes them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            out.append((f"{bound:g}", running))
        out.append(("+Inf", self.count))
        return out


class Registry:
    def __init__(self, service: str, node_id: str) -> None:
        self.service = service
        self.node_id = node_id
        self._metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help_text: str) -> Counter:
        metric = Counter(f"callrec_{name}", help_text)
        self._metrics.append(metric)
        return metric

    def gauge(
        self, name: str, help_text: str, func: Callable[[], float] | None = None
    ) -> Gauge:
        metric = Gauge(f"callrec_{name}", help_text, func)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, bounds: tuple[float, ...]) -> Histogram:
        metric = Histogram(f"callrec_{name}", help_text, bounds)
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        base = (("node", self.node_id), ("service", self.service))
        for metric in self._metrics:
            kind = ("counter" if isinstance(metric, Counter)
                    else "histogram" if isinstance(metric, Histogram) else "gauge")
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {kind}")
            if isinstance(metric, Histogram):
                labels = _labels(base)
                for le, count in metric.cumulative():
                    lines.append(f'{metric.name}_bucket{{{labels},le="{le}"}} {count}')
                lines.append(f"{metric.name}_sum{{{labels}}} {metric.sum:g}")
                lines.append(f"{metric.name}_count{{{labels}}} {metric.count}")
                continue
            values = dict(metric.values)
            if isinstance(metric, Gauge) and metric.func is not None:
                values[()] = metric.func()
            if not values and isinstance(metric, Counter):
                values[()] = 0.0
            for key, value in values.items():
                labels = _labels(base + key)
                lines.append(f"{metric.name}{{{labels}}} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
