"""Markdown tables of saved benchmark runs, for docs/performance.md.

    python -m benchmarks --markdown benchmarks/results/RUN.json      # print the table of one run
    python -m benchmarks --update-docs docs/performance.md           # rebuild every marked table
    python -m benchmarks --update-docs docs/performance.md --check   # exit 1 when one is stale

A table in a Markdown file sits between

    <!-- benchmark: benchmarks/results/RUN.json -->
    <!-- end benchmark -->

and is rebuilt from that JSON file alone, so that every number in the document is what a
`python -m benchmarks ... --json` run wrote (the run's command line, CPU and commit head the table).
"""
import json
import os
import re

MARKER = re.compile(r"<!-- benchmark: (\S+) -->\n.*?<!-- end benchmark -->", re.S)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _f(v, spec):
    return "-" if v is None or v != v else format(v, spec)


def _command(argv):
    """The run's options without where it wrote its files (--json, --compare)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--json", "--compare"):
            skip = True
        elif not a.startswith(("--json=", "--compare=")):
            out.append(a)
    return " ".join(out)


def markdown_table(path):
    """The Markdown table (and a line naming the machine, commit and command) of one saved run."""
    with open(path) as fh:
        run = json.load(fh)
    meta = run.get("meta", {})
    probed = run.get("matmul_probe", {}).get("24x784x200", {})
    probe, one_thread = probed.get("gflops"), probed.get("blas_threads") == 1
    jax = any("jax" in r for r in run.get("rows", []))
    lines = [f"{meta.get('cpu_model') or 'unknown CPU'}, {meta.get('cpu_count')} cores; commit "
             f"{(meta.get('git_commit') or '?')[:7]}, {meta.get('started', '')[:10]}; "
             f"`python -m benchmarks {_command(meta.get('argv', []))}`"
             + (f"; NumPy's 24x784x200 product: {probe:.0f} GFLOP/s" if probe else "")
             + (" on one BLAS thread" if probe and one_thread else ""), ""]
    if run.get("bound"):
        lines += ["| model | arch | samples | examples | threads | MMAC/sample | samples/s | s per 10,000 examples "
                  "| frac |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.get('model', '-')} | {r['arch']} | {r['samples']} | {r['examples']} | {r['workers']} | "
                  f"{r['macs_per_sample'] / 1e6:.3f} | {r['samples_per_s']:.0f} | {r['s_per_10000_examples']:.0f} | "
                  f"{r['fraction_of_matmul']:.2f} |" for r in run["bound"]]
        if not run.get("rows"):
            return "\n".join(lines)
        lines.append("")
    ceiling = any("ceiling" in r for r in run.get("rows", []))
    head = (["estimator", "arch", "MMAC", "steps/s", "frac"] + (["ceiling"] if ceiling else [])
            + (["JAX steps/s", "rebar_np / JAX"] if jax else []))
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in run.get("rows", []):
        cells = [r["estimator"], r["arch"], f"{r['macs'] / 1e6:.1f}", f"{r['steps_per_s']:.0f}",
                 f"{r['fraction_of_matmul']:.2f}"]
        if ceiling:
            cells.append(_f(r.get("ceiling"), ".2f"))
        if jax:
            j = r.get("jax")
            cells += [_f(j and j["steps_per_s"], ".0f"), _f(j and j["ratio_rebar_np_to_jax"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_docs(doc, check=False):
    """Rebuild every marked table of doc from its JSON file; returns True when doc changed (with
    check, when it would change, and nothing is written)."""
    with open(doc, encoding="utf-8") as fh:
        text = fh.read()

    def table(m):
        return f"<!-- benchmark: {m.group(1)} -->\n{markdown_table(os.path.join(ROOT, m.group(1)))}\n" \
               f"<!-- end benchmark -->"

    new = MARKER.sub(table, text)
    if new != text and not check:
        with open(doc, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text
