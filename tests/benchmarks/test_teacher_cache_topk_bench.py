"""benchmarks/teacher_cache_topk.py --disk writes real shards: top-k rows are smaller than exact ones, grow with k
and not with the class count, and the section is written without touching the file's other sections."""

import importlib.util
import json

from tests.conftest import REPO


def test_the_disk_part_measures_real_shards_and_keeps_other_sections(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("topk_bench", REPO / "benchmarks" / "teacher_cache_topk.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "topk.json"
    out.write_text(json.dumps({"fidelity": {"kept": True}}))
    bench.main(["--disk", "--rows", "64", "--classes", "10,1000", "--modes", "exact,1,3", "--json", str(out)])
    results = json.loads(out.read_text())
    assert results["fidelity"] == {"kept": True}
    rows = {(r["classes"], r["mode"]): r for r in results["disk"]["table"]}
    assert set(rows) == {(c, m) for c in (10, 1000) for m in ("exact", "top-1", "top-3")}
    for c in (10, 1000):
        exact, k1, k3 = (rows[c, m]["bytes_per_row"] for m in ("exact", "top-1", "top-3"))
        assert k1 < k3 < exact
    # a top-k row stores k values and k class ids whatever the class count; an exact row stores every class
    assert rows[10, "top-3"]["bytes_per_row"] == rows[1000, "top-3"]["bytes_per_row"]
    assert rows[1000, "exact"]["bytes_per_row"] > 50 * rows[10, "top-3"]["bytes_per_row"]
    assert rows[1000, "exact"]["imagenet_epoch_gb"] > 1 and rows[10, "exact"]["imagenet_epoch_gb"] is None
