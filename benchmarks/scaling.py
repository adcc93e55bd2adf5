"""How every model-free selector scales: time and peak memory at N = 10k, 100k, 1M, budget 5%.

Data (generated once, cached as Lance float16 under ``--cache``): clustered unit vectors - 200
centres, sentence embeddings of dim 384, gradient features of dim 8192 - and 500 query
gradient features (5 tasks of 100). Scalar scores (quality, IFDs, uncertainty, learning
percentage, golden and whisperer scores) and MIG label sets are drawn from a seed in the
measuring process (they cost nothing to make and little to hold).

Each measurement runs in its own process: it reads the representations the method needs from
the cache (as the selection assets do) and calls the registered selector; the process's peak
RSS (VmHWM) is its memory. Seconds count the selector alone; loading is reported beside it.
``influence`` is measured first at every N: the pool x query matrix streamed from the cached
pool gradient features one chunk at a time (``core.influence.influence_matrix``), the LESS task
scores, and the matrix written to Lance - the targeted selectors read that matrix.

A measurement is stopped at ``--timeout`` seconds or ``--memory-cap-gb`` resident (the table
says so); one whose time extrapolated from the smaller sizes (their exponent, at least linear)
exceeds twice the timeout is not started; a selector that refuses (an input that would not fit)
reports its message. The growth exponent is the least-squares slope of log(seconds) on log(N)
over the sizes that finished.

Every measurement is also saved to ``results.json`` in the cache; a rerun measures only what
is missing there (``--fresh`` measures everything again), so a long run can be continued.

Usage: python benchmarks/scaling.py [--sizes 10000 100000 1000000] [--cache DIR] [--timeout 600]
       [--memory-cap-gb 8] [--only METHOD ...] [--write docs/SCALING.md] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBED_DIM, GRAD_DIM, N_QUERIES, N_TASKS, N_CENTRES, BUDGET = 384, 8192, 500, 5, 200, 0.05
N_LABELS = 200
CACHE = Path.home() / ".cache" / "dsel-scaling"  # the data every scaling benchmark shares
CHUNK = 32_768
MODEL_NEEDS = {"trainer", "less_scorer"}  # methods needing these train or run the model
SCALARS = (
    "quality",
    "ifd",
    "pre_experienced_ifd",
    "superfiltering_ifd",
    "learning_percentage",
    "golden_score",
    "whisperer_score",
)


def model_free_methods() -> dict[str, object]:
    from dsel_assets.core.select.registry import methods

    return {name: spec for name, spec in methods().items() if not MODEL_NEEDS & set(spec.needs)}


def dataset(cache: Path, name: str) -> str:
    return str(cache / f"{name}.lance")


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(
        scale=0.6 / np.sqrt(centres.shape[1]), size=(n, centres.shape[1])
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _vectors_table(x: np.ndarray):
    import pyarrow as pa

    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])})


def ensure_vectors(cache: Path, name: str, n: int, dim: int, seed: int) -> None:
    """Lance dataset ``name`` of ``n`` clustered float16 unit vectors, written chunk by chunk."""
    import lance
    import pyarrow as pa

    path = dataset(cache, name)
    if Path(path).exists() and lance.dataset(path).count_rows() == n:
        return
    centres = np.random.default_rng(seed).normal(size=(N_CENTRES, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = pa.schema([("vector", pa.list_(pa.float16(), dim))])

    def batches():
        for start in range(0, n, CHUNK):
            rng = np.random.default_rng([seed, start])
            yield from _vectors_table(_clustered(rng, centres, min(CHUNK, n - start))).to_batches()

    started = time.perf_counter()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), path, schema=schema, mode="overwrite")
    print(f"  generated {name}: {n} x {dim} float16 in {time.perf_counter() - started:.0f}s", file=sys.stderr)


def prepare(cache: Path, sizes: list[int]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        ensure_vectors(cache, f"embed_{n}", n, EMBED_DIM, seed=1)
        ensure_vectors(cache, f"grad_{n}", n, GRAD_DIM, seed=2)
    ensure_vectors(cache, "query_grad", N_QUERIES, GRAD_DIM, seed=2)  # same centres as the pool


def read_matrix(path: str, dtype=np.float32) -> np.ndarray:
    import lance

    from dsel_assets.pipeline.stored import fill_rows

    table = lance.dataset(path).to_table(columns=["vector"])
    column = table.column("vector")
    return fill_rows(column, np.empty((len(column), column.type.list_size), dtype=dtype))


def query_tasks() -> list[str]:
    return [f"task{j * N_TASKS // N_QUERIES}" for j in range(N_QUERIES)]


def measure_influence(cache: Path, n: int) -> dict:
    """Stream pool gradient chunks into the influence matrix, aggregate LESS scores, write it."""
    import lance

    from dsel_assets.core.influence import aggregate_less_scores, influence_matrix
    from dsel_assets.pipeline.stored import matrix_table, vector_matrix

    queries = read_matrix(dataset(cache, "query_grad"))
    ids = [str(i) for i in range(n)]

    def pool_batches():
        start = 0
        for batch in lance.dataset(dataset(cache, f"grad_{n}")).to_batches(columns=["vector"], batch_size=4096):
            yield 0, ids[start : start + batch.num_rows], vector_matrix(batch.column("vector"))
            start += batch.num_rows

    started = time.perf_counter()
    scores = influence_matrix(ids, {0: queries}, pool_batches(), {0: 1.0})
    aggregate_less_scores(scores, query_tasks(), query_tasks())
    computed = time.perf_counter() - started
    lance.write_dataset(matrix_table(ids, scores), dataset(cache, f"influence_{n}"), mode="overwrite")
    return {"seconds": time.perf_counter() - started, "note": f"matrix {computed:.1f}s, write the rest"}


def representations(cache: Path, n: int, needs: tuple[str, ...], cap_bytes: int) -> dict:
    """What the selector's ``needs`` name, built like the selection assets build them."""
    from dsel_assets.core.influence import aggregate_less_scores
    from dsel_assets.core.select.mig import Labels
    from dsel_assets.core.select.targeted import Influence
    from dsel_assets.pipeline.registry import UNCERTAINTY_COLUMNS

    rng = np.random.default_rng(7)
    out: dict = {}
    influence = None
    for need in needs:
        if need == "sentence_embeddings":
            out[need] = read_matrix(dataset(cache, f"embed_{n}"))
        elif need in ("influence", "less_scores"):
            if influence is None:
                import lance

                from dsel_assets.pipeline.stored import vector_matrix

                table = lance.dataset(dataset(cache, f"influence_{n}")).to_table(columns=["scores"])
                influence = Influence(vector_matrix(table.column("scores")).astype(np.float32), tuple(query_tasks()))
            out[need] = (
                influence
                if need == "influence"
                else aggregate_less_scores(influence.scores, query_tasks(), query_tasks())
            )
        elif need in ("pool_gradients", "pool_checkpoint_gradients"):  # one checkpoint stands in for all
            size = n * GRAD_DIM * 4
            if size > cap_bytes:
                raise MemoryError(
                    f"{need}: {n} x {GRAD_DIM} float32 needs {size / 2**30:.1f} GiB in memory "
                    f"(cap {cap_bytes / 2**30:.0f} GiB)"
                )
            out[need] = read_matrix(dataset(cache, f"grad_{n}"))
        elif need == "query_gradients":
            out[need] = (read_matrix(dataset(cache, "query_grad")), query_tasks())
        elif need in SCALARS:
            out[need] = rng.uniform(0.05, 1.0, n)
        elif need == "uncertainty":
            out[need] = {c: rng.uniform(0.05, 1.0, n) for c in UNCERTAINTY_COLUMNS}
        elif need == "labels":
            members = [list(rng.choice(N_LABELS, size=rng.integers(1, 4), replace=False)) for _ in range(n)]
            vocab = rng.normal(size=(N_LABELS, EMBED_DIM))
            out[need] = Labels(members, vocab / np.linalg.norm(vocab, axis=1, keepdims=True))
        else:
            raise KeyError(f"scaling: no synthetic stand-in for {need!r}")
    return out


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def limit_available_memory(cap_bytes: int) -> None:
    """Make psutil report at most ``cap_bytes`` available, so a selector that checks memory
    before it starts (uot, novelselect, the gradient loader) refuses as it would on a machine
    with only the cap free, instead of running until the parent stops it."""
    import psutil

    real = psutil.virtual_memory

    def capped():
        memory = real()
        return memory._replace(available=min(memory.available, cap_bytes))

    psutil.virtual_memory = capped


def child(args) -> None:
    """One measurement in this process; prints one JSON line."""
    from dsel_assets.core.select.registry import build_config, get

    n, cache = args.n, Path(args.cache)
    limit_available_memory(int(args.memory_cap_gb * 2**30))
    try:
        if args.measure == "influence":
            result = measure_influence(cache, n)
            result["load_seconds"] = 0.0
        else:
            spec = get(args.measure)
            started = time.perf_counter()
            reps = representations(cache, n, spec.needs, int(args.memory_cap_gb * 2**30))
            loaded = time.perf_counter() - started
            k = int(n * BUDGET)
            started = time.perf_counter()
            fields = {name for name, *_ in spec.parameters()}
            config = build_config(spec.name, {"task": "task0"} if "task" in fields else {})  # a targeted task
            selection = spec.select([str(i) for i in range(n)], k, config, **reps)
            result = {"seconds": time.perf_counter() - started, "load_seconds": loaded, "selected": len(selection.ids)}
            result["note"] = str(selection.diagnostics.get("kernel", "")) if selection.diagnostics else ""
    except (MemoryError, ValueError, RuntimeError) as error:
        result = {"refused": f"{type(error).__name__}: {error}"}
    result["peak_mb"] = peak_mb()
    print("RESULT " + json.dumps(result), flush=True)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_one(method: str, n: int, args) -> dict:
    """Measure in a child process, stopping it at the time or memory cap."""
    cmd = [sys.executable, __file__, "--measure", method, "--n", str(n), "--cache", args.cache]
    cmd += ["--memory-cap-gb", str(args.memory_cap_gb)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    started, highest = time.monotonic(), 0.0
    while process.poll() is None:
        highest = max(highest, rss_mb(process.pid))
        if highest > args.memory_cap_gb * 1024:
            process.kill()
            process.wait()
            return {"stopped": f"over {args.memory_cap_gb:g} GB resident", "peak_mb": highest}
        if time.monotonic() - started > args.timeout:
            process.kill()
            process.wait()
            return {"stopped": f"over {args.timeout:.0f} s", "peak_mb": highest}
        time.sleep(0.2)
    lines = [line for line in process.stdout.read().splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        return {"stopped": f"crashed (exit {process.returncode})", "peak_mb": highest}
    return json.loads(lines[-1].removeprefix("RESULT "))


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(N); None with fewer than two points."""
    points = [(n, s) for n, s in points if s > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def projection(by_n: dict[int, dict], n: int) -> float | None:
    """Seconds at ``n`` extrapolated from the sizes measured so far (their growth exponent), so
    a selector that could not finish in time is not run for the timeout's full length."""
    done = [(m, r["seconds"]) for m, r in sorted(by_n.items()) if "seconds" in r]
    slope = exponent(done)
    if slope is None:
        return None
    largest, seconds = done[-1]
    return seconds * (n / largest) ** max(slope, 1.0)


def table(results: dict[str, dict[int, dict]], sizes: list[int]) -> str:
    header = "| method | " + " | ".join(f"N={n:,}: s / peak MB" for n in sizes) + " | exponent | notes |"
    lines = [header, "|" + "---|" * (len(sizes) + 3)]
    for method, by_n in results.items():
        cells, notes = [], []
        for n in sizes:
            r = by_n.get(n)
            if r is None:
                cells.append("-")
            elif "seconds" in r:
                cells.append(f"{r['seconds']:.2f} / {r['peak_mb']:.0f}")
                if r.get("note"):
                    notes.append(f"{n:,}: {r['note']}")
            else:
                cells.append(f"{'refused' if 'refused' in r else 'stopped'} / {r['peak_mb']:.0f}")
                notes.append(f"{n:,}: {r.get('refused') or r.get('stopped')}")
        slope = exponent([(n, by_n[n]["seconds"]) for n in sizes if n in by_n and "seconds" in by_n[n]])
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {'-' if slope is None else f'{slope:.2f}'} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a measurement is stopped")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0, help="resident memory before one is stopped")
    parser.add_argument("--only", nargs="*", help="methods to measure (default: every model-free one)")
    parser.add_argument("--write", help="markdown file to write the table to")
    parser.add_argument(
        "--fresh", action="store_true", help="measure the --only methods (default: all) again, not from results.json"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args)
        return
    free = model_free_methods()
    methods = ["influence", *(args.only or free)]
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"scaling: sizes {args.sizes}, {len(methods) - 1} selectors, {os.cpu_count()} cores, load {load}",
        file=sys.stderr,
    )
    prepare(Path(args.cache), args.sizes)
    saved = Path(args.cache) / "results.json"  # every measurement, kept for reruns
    kept = json.loads(saved.read_text()) if saved.exists() else {}
    again = set(args.only or methods) if args.fresh else set()  # --fresh: measure these again
    results: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for method, by_n in kept.items():
        if method in results and method not in again:
            results[method] = {int(n): r for n, r in by_n.items() if int(n) in args.sizes}
    for n in args.sizes:
        for method in methods:
            if n in results[method]:
                continue
            projected = projection(results[method], n)
            if method != "influence" and "influence" in free[method].needs and "seconds" not in results["influence"][n]:
                results[method][n] = {"refused": "no influence matrix at this N", "peak_mb": 0.0}
            elif projected is not None and projected > 2 * args.timeout:
                results[method][n] = {"stopped": f"not run: {projected:,.0f} s projected", "peak_mb": 0.0}
            else:
                results[method][n] = run_one(method, n, args)
            print(f"  {method} N={n}: {json.dumps(results[method][n])}", file=sys.stderr, flush=True)
            kept.setdefault(method, {})[str(n)] = results[method][n]
            saved.write_text(json.dumps(kept))
        report = summary(results, args, load, done=args.sizes[: args.sizes.index(n) + 1])
        if args.write:  # after every size, so a long run leaves what it measured
            write_between_markers(Path(args.write), report)
    print(report)


def summary(results: dict[str, dict[int, dict]], args, load: str, done: list[int]) -> str:
    from dsel_assets.core.select.registry import methods as registered

    skipped = sorted(set(registered()) - set(model_free_methods()))
    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores (load average {load} at the start), "
        f"budget {BUDGET:.0%}, timeout {args.timeout:.0f} s, memory cap {args.memory_cap_gb:g} GB.\n\n"
        + table(results, done)
        + f"\n\nNot measured here (they run the model): {', '.join(skipped)}.\n"
    )


BEGIN, END = "<!-- scaling.py: begin -->", "<!-- scaling.py: end -->"


def write_between_markers(path: Path, report: str) -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the prose around it."""
    text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{report}{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
