"""What metrics cost: a student's training loop with and without ``metrics_port``.

The student reads a knowledge file of many small batches (so that the per-batch cost shows),
without metrics, with an endpoint nobody scrapes, and with one that a thread scrapes over
HTTP every ``--every`` seconds (default 0.5: thirty times Prometheus' usual 15 s), in turn,
several times; it prints the median seconds of each and the ratios, and the cost of one
histogram observation against a bare ``time.perf_counter()`` pair.

    python benchmarks/metrics.py [--batches 50000] [--repeats 5] [--every 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from pantheon import Student, Teacher
from pantheon._metrics import SECONDS_BUCKETS, Histogram


def read_all(path: Path, metrics: bool, every: float | None) -> float:
    """Seconds for the student's loop over the whole file (scraped every ``every`` s)."""
    student = Student(metrics_port=0 if metrics else None)
    student.register_teacher(in_path=path)
    stop = threading.Event()
    scrapes = [0]

    def scrape() -> None:
        while not stop.wait(every):
            with urllib.request.urlopen(f"http://{student.metrics_address}/metrics") as r:
                r.read()
            scrapes[0] += 1

    scraper = threading.Thread(target=scrape) if metrics and every else None
    gen = student.get_knowledge_generator(batch_size=16)
    if scraper is not None:
        scraper.start()
    t0 = time.perf_counter()
    for _ in gen():
        pass
    seconds = time.perf_counter() - t0
    stop.set()
    if scraper is not None:
        scraper.join()
        assert scrapes[0] > 0 or seconds < 2 * (every or 0)
    student.close()
    return seconds


def observe_cost(n: int = 200_000) -> tuple[float, float]:
    """Nanoseconds per call: ``perf_counter()`` pair alone, and with ``Histogram.observe``."""
    h = Histogram(SECONDS_BUCKETS)
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        _ = time.perf_counter() - a
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        h.observe(time.perf_counter() - a)
    timed = time.perf_counter() - t0
    return bare / n * 1e9, timed / n * 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=50000, help="batches of 16 samples in the file")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--every", type=float, default=0.5, help="seconds between two scrapes")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.arrow"
        with Teacher(out_path=path) as teacher:
            for i in range(0, args.batches * 16, 16 * 500):
                x = np.arange(i, i + 16 * 500, dtype=np.int64).reshape(-1, 1)
                teacher.dump({"x": x, "y": x.astype(np.float32)})
        runs: dict[str, list[float]] = {"without metrics": [], "endpoint": [], "scraped": []}
        settings = {"without metrics": (False, None), "endpoint": (True, None)}
        settings["scraped"] = (True, args.every)
        names = list(settings)
        read_all(path, False, None)  # warm the page cache and the imports
        for i in range(args.repeats):  # in turn, starting with another one each time
            for name in names[i % 3 :] + names[: i % 3]:
                runs[name].append(read_all(path, *settings[name]))
    base = float(np.median(runs["without metrics"]))
    print(f"student loop, {args.batches} batches of 16 (median of {args.repeats}):")
    for name, seconds in runs.items():
        m = float(np.median(seconds))
        rate = args.batches / m
        print(f"  {name:<16} {m:8.3f} s {rate:10.0f} batches/s   ratio {m / base:.3f}")
    bare, timed = observe_cost()
    print(f"histogram observation: {timed - bare:.0f} ns per call ({bare:.0f} ns for the timing)")


if __name__ == "__main__":
    main()
