"""bench/render_report.py: %copy and speedup_vs_aten from one Google Benchmark JSON, the derived
JSON written beside it, the tables, the plots (or a clear failure without matplotlib) and the
README block."""

import builtins
import importlib.util
import json
import pathlib
import random
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("render_report", ROOT / "bench" / "render_report.py")
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def entry(name, time, gbps, unit="us", aggregate="median", label=None):
    e = {"name": f"{name}/min_warmup_time:0.050/real_time_{aggregate}", "run_name": f"{name}/min_warmup_time:0.050/real_time",
         "run_type": "aggregate", "aggregate_name": aggregate, "real_time": time, "cpu_time": time,
         "time_unit": unit, "GB/s": gbps}
    if label is not None:
        e["label"] = label
    return e


def synthetic(rng):
    """A run with the copy at 4K and 1M, the per-tensor pair at both (ATen in ns to check the
    unit conversion), the weight pair on one shape, and mean aggregates that must be ignored.
    Returns (json, expected {(family, numel, shape): (pct_copy, speedup)})."""
    benches, expected = [], {}
    copy = {}
    for n in (4096, 1 << 20):
        copy[n] = (rng.uniform(0.5, 100), rng.uniform(10, 60))
        benches.append(entry(f"BM_Copy/numel:{n}/dtype:0", *copy[n]))
        benches.append(entry(f"BM_Copy/numel:{n}/dtype:0", 1e9, 1e-9, aggregate="mean"))
    for n in (4096, 1 << 20):
        ours_t, ours_g = rng.uniform(1, 1000), rng.uniform(1, 50)
        aten_t, aten_g = rng.uniform(1, 1000), rng.uniform(1, 50)
        benches.append(entry(f"BM_FakeQuantPerTensor_fakequant/numel:{n}/dtype:0", ours_t, ours_g))
        benches.append(entry(f"BM_FakeQuantPerTensor_fakequant/numel:{n}/dtype:0", 7.0, 7.0, aggregate="mean"))
        benches.append(entry(f"BM_FakeQuantPerTensor_aten/numel:{n}/dtype:0", aten_t * 1e3, aten_g, unit="ns"))
        benches.append(entry(f"BM_FakeQuantPerTensor_aten/numel:{n}/dtype:0", rng.uniform(0.001, 0.5), 0.0,
                             aggregate="cv"))
        expected[("BM_FakeQuantPerTensor_fakequant", n, None)] = (100 * ours_g / copy[n][1], aten_t / ours_t)
    ours_t, ours_g, aten_t, aten_g = (rng.uniform(1, 100) for _ in range(4))
    benches.append(entry("BM_WeightAbsMax_fakequant/numel:4096/dtype:0/shape:0", ours_t, ours_g, label="64x64 axis 0"))
    benches.append(entry("BM_WeightAbsMax_aten/numel:4096/dtype:0/shape:0", aten_t, aten_g, label="64x64 axis 0"))
    expected[("BM_WeightAbsMax_fakequant", 4096, 0)] = (100 * ours_g / copy[4096][1], aten_t / ours_t)
    # fakequant alone (no ATen, no copy at this size): shown with dashes, no derived numbers.
    benches.append(entry("BM_MinMax_fakequant/numel:65536/dtype:1", 3.0, 4.0))
    ctx = {"device": "cpu", "device_name": "CPU test", "date": "2000-01-01T00:00:00Z", "commit": "abc",
           "intra_op_threads": "2", "mode": "full", "load_avg": [0.5, 0.25, 0.125], "num_cpus": 2}
    return {"context": ctx, "benchmarks": benches}, expected


@pytest.fixture
def run(tmp_path):
    rng = random.Random()
    data, expected = synthetic(rng)
    path = tmp_path / "fake_quant.json"
    path.write_text(json.dumps(data))
    return path, expected


def test_pair_rows_compute_pct_copy_and_speedup(run):
    path, expected = run
    _, rows, _ = rr.load(path)
    got = {}
    for ours, aten in (("BM_FakeQuantPerTensor_fakequant", "BM_FakeQuantPerTensor_aten"),
                       ("BM_WeightAbsMax_fakequant", "BM_WeightAbsMax_aten")):
        for r in rr.pair_rows(rows, ours, aten):
            got[(ours, r["numel"], r["shape"])] = (r["pct_copy"], r["speedup_vs_aten"])
    assert got.keys() == expected.keys()
    for k, (pct, sp) in expected.items():
        assert got[k][0] == pytest.approx(pct, rel=1e-12) and got[k][1] == pytest.approx(sp, rel=1e-12), k
    lone = rr.pair_rows(rows, "BM_MinMax_fakequant", "BM_MinMax_aten")
    assert len(lone) == 1 and lone[0]["pct_copy"] is None and lone[0]["speedup_vs_aten"] is None


def test_derived_json_adds_counters_to_the_median_entries(run):
    path, expected = run
    out = rr.derived_json(path)
    by_name = {}
    for b in out["benchmarks"]:
        if b["aggregate_name"] == "median":
            by_name[b["run_name"].split("/min_warmup")[0]] = b
        else:
            assert "%copy" not in b and "speedup_vs_aten" not in b
    for (family, n, shape), (pct, sp) in expected.items():
        name = f"{family}/numel:{n}/dtype:0" + (f"/shape:{shape}" if shape is not None else "")
        assert by_name[name]["%copy"] == pytest.approx(pct) and by_name[name]["speedup_vs_aten"] == pytest.approx(sp)
        aten = by_name[name.replace("_fakequant", "_aten")]
        assert "speedup_vs_aten" not in aten and aten["%copy"] > 0
    assert "%copy" not in by_name["BM_MinMax_fakequant/numel:65536/dtype:1"]
    titles = [p["fakequant"] for p in out["derived"]["pairs"]]
    assert titles == ["BM_FakeQuantPerTensor_fakequant", "BM_MinMax_fakequant", "BM_WeightAbsMax_fakequant"]


def test_pairs_come_from_the_names(run, capsys):
    """BM_<op>_fakequant pairs with BM_<op>_aten: described ops in DESCRIPTIONS' order, then the
    others under their names in the run's order; a family outside the rule is named on stderr."""
    path, _ = run
    data = json.loads(path.read_text())
    data["benchmarks"][:0] = [entry("BM_Zeta_fakequant/numel:4096/dtype:0", 2.0, 8.0),
                              entry("BM_Zeta_aten/numel:4096/dtype:0", 5.0, 4.0),
                              entry("BM_Alpha_fakequant/numel:4096/dtype:0", 1.0, 9.0),
                              entry("BM_Unpaired_aten/numel:4096/dtype:0", 1.0, 1.0),
                              entry("BM_Odd/numel:4096/dtype:0", 1.0, 1.0)]
    path.write_text(json.dumps(data))
    _, rows, _ = rr.load(path)
    got = [(title, ours, aten) for title, ours, aten, _ in rr.pairs(rows)]
    assert got == [(rr.DESCRIPTIONS[op][0], f"BM_{op}_fakequant", f"BM_{op}_aten")
                   for op in ("FakeQuantPerTensor", "MinMax", "WeightAbsMax")] + [
        ("Zeta", "BM_Zeta_fakequant", "BM_Zeta_aten"), ("Alpha", "BM_Alpha_fakequant", "BM_Alpha_aten")]
    (zeta,) = rr.pair_rows(rows, "BM_Zeta_fakequant", "BM_Zeta_aten")
    assert zeta["speedup_vs_aten"] == pytest.approx(2.5)
    assert rr.off_rule(rows) == ["BM_Unpaired_aten", "BM_Odd"]
    text = rr.tables(rows)
    assert "**Zeta** — ATen: `BM_Zeta_aten`" in text and text.index("**Zeta**") < text.index("**Alpha**")
    rr.report(path, None, None)
    assert "BM_Unpaired_aten, BM_Odd" in capsys.readouterr().err


def test_every_registered_pair_is_described():
    """The ops bench/*.cpp register (fb::register_pairs rows) and the renderer's DESCRIPTIONS are
    the same set, so no pair of a new run is reported without its title."""
    registered = set()
    for cpp in sorted((ROOT / "bench").glob("bench_*.cpp")):
        text = cpp.read_text()
        for block in re.findall(r"register_pairs\(\{(.*?)\}\);", text, re.S):
            registered.update(re.findall(r'\{"(\w+)",', block))
    assert registered == set(rr.DESCRIPTIONS)


def test_report_fails_clearly_without_matplotlib(run, monkeypatch, tmp_path):
    path, _ = run
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(SystemExit, match="matplotlib is required"):
        rr.report(path, tmp_path / "report.md", None)


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed (ci/setup.sh installs it)")
def test_report_writes_tables_plots_and_derived_json(run, tmp_path):
    path, expected = run
    text = rr.report(path, tmp_path / "report.md", None)
    pct, sp = expected[("BM_FakeQuantPerTensor_fakequant", 4096, None)]
    _, rows, _ = rr.load(path)
    cv = rows[("BM_FakeQuantPerTensor_aten", 4096, "fp32", None)]["cv"]
    assert f"| {pct:.0f}% | {sp:.2f}× | – / {100 * cv:.0f}% |" in text  # no cv for fakequant here
    assert "| fp32 | 4K | 64x64 axis 0 |" in text
    assert "| bf16 | 64K | 3.00 | – | – |" in text
    for png in ("FakeQuantPerTensor.png", "WeightAbsMax.png", "MinMax.png"):
        assert f"(plots/{png})" in text
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "fake_quant.derived.json").read_text())["derived"]["from"] == "fake_quant.json"
    assert "Load average when the run started: 0.50, 0.25, 0.12" in text


def test_module_tables_and_readme_block(run, tmp_path):
    path, expected = run
    rng = random.Random()
    t = [rng.uniform(1, 100) for _ in range(4)]
    modules = {"context": {"device_name": "CPU test", "threads": 2, "mode": "quick"},
               "calls": [{"op": "fake_quantize_per_tensor", "numel": 256, "aten_way": "x",
                          "fakequant": {"median_us": t[0]}, "aten": {"median_us": t[1]}}],
               "modules": [{"module": "MovingAverageMinMaxFakeQuantize", "shape": [64, 64], "dtype": "fp32",
                            "fakequant": {"median_us": t[2]}, "baselines": {"FusedMovingAvgObsFakeQuantize":
                                                                            {"median_us": t[3]}}}]}
    text = rr.module_tables(modules)
    assert f"| {t[1] / t[0]:.2f}× |" in text and f"| {t[3] / t[2]:.2f}× |" in text and "64×64" in text
    (path.parent / "modules.json").write_text(json.dumps(modules))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{rr.README_START}\nold table\n{rr.README_END}\nafter\n")
    rr.update_readme(readme, [path])
    out = readme.read_text()
    assert out.startswith("before\n") and out.endswith("after\n") and "old table" not in out
    pct, sp = expected[("BM_FakeQuantPerTensor_fakequant", 1 << 20, None)]
    assert f"| {sp:.2f}× | {pct:.0f}% |" in out  # largest size of the per-tensor family
    assert "MovingAverageMinMaxFakeQuantize" in out and "device **CPU test**" in out
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="markers not found"):
        rr.update_readme(readme, [path])


def test_compute_bound_family_gets_flop_rates_and_no_plot(tmp_path):
    rng = random.Random()
    ours_t, aten_t, ours_f, aten_f = (rng.uniform(1, 1000) for _ in range(4))
    benches = [entry("BM_Copy/numel:4096/dtype:0", 1.0, 30.0)]
    for fam, t, f in (("BM_ConvBnStep_fakequant", ours_t, ours_f), ("BM_ConvBnStep_aten", aten_t, aten_f)):
        e = entry(f"{fam}/numel:4096/dtype:0/shape:0", t, 2.0, label="1x16x16x16 3x3 ->16")
        e["GFLOP/s"] = f
        benches.append(e)
    path = tmp_path / "fake_quant.json"
    path.write_text(json.dumps({"context": {"device": "cpu"}, "benchmarks": benches}))
    _, rows, _ = rr.load(path)
    text = rr.tables(rows, "plots")
    assert "| fakequant GFLOP/s | ATen GFLOP/s |" in text
    assert f"| 1x16x16x16 3x3 ->16 | {rr.fmt_us(ours_t)} | {rr.fmt_us(aten_t)} | {ours_f:.1f} | {aten_f:.1f} | " \
           f"{aten_t / ours_t:.2f}× |" in text
    assert "ConvBnStep.png" not in text and "%copy" not in text


def test_convbn_step_tables_and_summary():
    rng = random.Random()
    rows = []
    for mode, base in (("running", "torch.ao ConvBnReLU2d"), ("batch", "linger-style composite")):
        for dtype in ("float32", "bfloat16_autocast"):
            t0, t1 = rng.uniform(1, 50), rng.uniform(1, 50)
            s0, s1 = rng.uniform(1e6, 1e8), rng.uniform(1e6, 1e8)
            rows.append(dict(shape="64x64_3x3_56", batch=4, dtype=dtype, mode=mode, baseline=base, fakequant_ms=t0,
                             baseline_ms=t1, speedup=t1 / t0, fakequant_saved_bytes=s0, baseline_saved_bytes=s1,
                             saved_ratio=s0 / s1))
    js = {"device": "cpu", "torch": "2.x", "threads": 2, "date": "2000-01-02T03:04:05", "commit": "f" * 40,
          "results": rows}
    text = rr.step_tables(js)
    for r in rows:
        assert (f"| {r['mode']} | {r['baseline']} | 64x64_3x3_56 | 4 | {r['dtype']} | {r['fakequant_ms']:.3f} | "
                f"{r['baseline_ms']:.3f} | {r['speedup']:.2f}× |") in text
    assert "peak ratio" not in text  # CPU rows have no peak memory
    summary = rr.step_summary(js)
    run_sp = [r["speedup"] for r in rows if r["mode"] == "running"]
    assert f"| mode `running` | torch.ao ConvBnReLU2d | {min(run_sp):.2f}×–{max(run_sp):.2f}× |" in summary
    assert "(cpu, 2000-01-02)" in summary


COMMITTED = sorted((ROOT / "bench" / "results").glob("*/fake_quant.json"))


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is needed to render a report")
@pytest.mark.parametrize("result", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_report_is_the_rendering_of_its_raw_json(result, tmp_path, monkeypatch):
    """Nothing in a committed report or in README's benchmark section is typed by hand: rendering
    the committed raw JSON again gives the committed report, derived JSON and README block."""
    folder = result.parent
    for name in ("fake_quant.json", "modules.json", "convbn_step.json", "llm_formats.json"):
        if (folder / name).is_file():
            (tmp_path / name).write_bytes((folder / name).read_bytes())
    step, llm = tmp_path / "convbn_step.json", tmp_path / "llm_formats.json"
    text = rr.report(tmp_path / "fake_quant.json", tmp_path / "report.md", tmp_path / "modules.json",
                     step if step.is_file() else None, llm if llm.is_file() else None)
    assert text == (folder / "report.md").read_text()
    assert (tmp_path / "fake_quant.derived.json").read_text() == (folder / "fake_quant.derived.json").read_text()
    # README: the block update_readme writes from every committed result equals README's.
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    monkeypatch.chdir(ROOT)
    rr.update_readme(readme, [p.relative_to(ROOT) for p in COMMITTED])
    assert readme.read_text() == (ROOT / "README.md").read_text()
