"""Cluster files: every malformed input gives exit 2 with the file and field, and the generator."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from factories import make_family

from melplan.cli import main
from melplan.core.catalog import save_family
from melplan.core.cluster import load_cluster, parse_cluster
from melplan.core.clustergen import cluster_yaml, generate_cluster
from melplan.core.errors import ClusterError, InputError

GOOD = """\
servers:
  - {name: edge-a, memory_mb: 512, compute_gmacs: 40, failure_prob: 0.02}
  - {name: edge-b, memory_mb: 256, compute_gmacs: 20, mtbf_h: 500, mttr_h: 5}
links:
  default: {latency_ms: 1.0, bandwidth_mbps: 1000}
  overrides:
    - {between: [edge-a, edge-b], latency_ms: 8.0, bandwidth_mbps: 100}
ingress: edge-a
workload: {rate_rps: 50, latency_slo_ms: 50}
"""

# (name, YAML text, the field the message must name, a word of the message)
MALFORMED = [
    ("unknown top-level key", GOOD + "extra: 1\n", "extra", "unknown key"),
    (
        "unknown server key",
        GOOD.replace("failure_prob: 0.02}", "failure_prob: 0.02, gpu: yes}"),
        "servers[0].gpu",
        "unknown key",
    ),
    (
        "unknown link key",
        GOOD.replace("bandwidth_mbps: 1000}", "bandwidth_mbps: 1000, jitter: 2}"),
        "links.default.jitter",
        "unknown key",
    ),
    (
        "unknown workload key",
        GOOD.replace("latency_slo_ms: 50}", "latency_slo_ms: 50, burst: 3}"),
        "workload.burst",
        "unknown key",
    ),
    ("duplicate name", GOOD.replace("name: edge-b", "name: edge-a"), "servers[1].name", "duplicate"),
    ("negative memory", GOOD.replace("memory_mb: 512", "memory_mb: -512"), "memory_mb", "must be > 0"),
    ("zero compute", GOOD.replace("compute_gmacs: 40", "compute_gmacs: 0"), "compute_gmacs", "must be > 0"),
    ("missing memory", GOOD.replace("memory_mb: 512, ", ""), "memory_mb", "missing"),
    ("missing compute", GOOD.replace("compute_gmacs: 20, ", ""), "compute_gmacs", "missing"),
    ("missing failure probability", GOOD.replace(", failure_prob: 0.02", ""), "failure_prob", "missing"),
    ("probability 1", GOOD.replace("failure_prob: 0.02", "failure_prob: 1.0"), "failure_prob", "<= 0.99"),
    ("negative probability", GOOD.replace("failure_prob: 0.02", "failure_prob: -0.1"), "failure_prob", ">= 0"),
    ("probability as text", GOOD.replace("failure_prob: 0.02", "failure_prob: high"), "failure_prob", "number"),
    (
        "both probability and mtbf",
        GOOD.replace("failure_prob: 0.02", "failure_prob: 0.02, mtbf_h: 9, mttr_h: 1"),
        "failure_prob",
        "both",
    ),
    ("negative mttr", GOOD.replace("mttr_h: 5", "mttr_h: -5"), "mttr_h", ">= 0"),
    (
        "link to unknown server",
        GOOD.replace("between: [edge-a, edge-b]", "between: [edge-a, edge-z]"),
        "links.overrides[0].between",
        "unknown server",
    ),
    (
        "link to itself",
        GOOD.replace("between: [edge-a, edge-b]", "between: [edge-a, edge-a]"),
        "links.overrides[0].between",
        "two different",
    ),
    ("negative link latency", GOOD.replace("latency_ms: 8.0", "latency_ms: -8.0"), "latency_ms", ">= 0"),
    ("zero bandwidth", GOOD.replace("bandwidth_mbps: 100}", "bandwidth_mbps: 0}"), "bandwidth_mbps", "> 0"),
    ("unknown ingress", GOOD.replace("ingress: edge-a", "ingress: edge-q"), "ingress", "unknown server"),
    ("missing workload", GOOD.replace("workload: {rate_rps: 50, latency_slo_ms: 50}\n", ""), "workload", "missing"),
    ("negative rate", GOOD.replace("rate_rps: 50", "rate_rps: -1"), "workload.rate_rps", "> 0"),
    ("no servers", "servers: []\nworkload: {rate_rps: 1}\n", "servers", "non-empty"),
    ("servers not a list", "servers: {a: 1}\nworkload: {rate_rps: 1}\n", "servers", "non-empty list"),
    ("empty file", "", "servers", "empty"),
    ("malformed YAML", "servers:\n  - {name: a, memory_mb: 1\n", None, "not valid YAML"),
    ("tabs and bad indentation", "servers:\n\t- name: a\n", None, "not valid YAML"),
    (
        "bad server name",
        GOOD.replace("name: edge-a", "name: 'Edge A'")
        .replace("ingress: edge-a", "ingress: edge-b")
        .replace("between: [edge-a, edge-b]", "between: [edge-b, edge-b]"),
        "servers[0].name",
        "invalid server name",
    ),
    (
        "disconnected without a default link",
        GOOD.replace("default: {latency_ms: 1.0, bandwidth_mbps: 1000}", "default: null").replace(
            "    - {between: [edge-a, edge-b], latency_ms: 8.0, bandwidth_mbps: 100}\n", ""
        ),
        "links",
        "cannot be reached",
    ),
]


@pytest.fixture()
def catalog_dir(tmp_path):
    d = tmp_path / "catalog"
    save_family(make_family(2, seed=1), d)
    save_family(make_family(1, seed=2, fid="single"), d)
    return d


def test_the_good_file_is_valid(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    c = load_cluster(f)
    assert c.server("edge-b").failure_prob == pytest.approx(5 / 505)
    r = CliRunner().invoke(main, ["cluster", "check", str(f)])
    assert r.exit_code == 0 and "valid" in r.output


@pytest.mark.parametrize("name, text, field, word", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_cluster_gives_exit_2_naming_file_and_field(tmp_path, catalog_dir, name, text, field, word):
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    with pytest.raises(ClusterError) as err:
        load_cluster(f)
    assert err.value.file == str(f)
    if field is not None:
        assert field in (err.value.field or ""), (err.value.field, field)
    assert word in str(err.value)
    assert err.value.fix
    for args in (["cluster", "check", str(f)], ["plan", "--servers", str(f), "--catalog", str(catalog_dir)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert str(f) in r.output and word in r.output
        assert "Traceback" not in r.output
        assert isinstance(r.exception, SystemExit)  # a clean exit, not an uncaught error


def test_a_missing_file(tmp_path):
    r = CliRunner().invoke(main, ["cluster", "check", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "nope.yaml" in r.output and "cannot read" in r.output


# -- the generator ----------------------------------------------------------------------------------


def test_generated_cluster_is_seeded_valid_and_heterogeneous(tmp_path):
    a = generate_cluster(200, seed=0)
    b = generate_cluster(200, seed=0)
    c = generate_cluster(200, seed=1)
    assert a == b and a != c
    assert len(a.servers) == 200 and len({s.name for s in a.servers}) == 200
    assert len({(s.memory_mb, s.compute_gmacs) for s in a.servers}) >= 8
    assert len({s.labels["class"] for s in a.servers}) == 4
    zones = {s.labels["zone"] for s in a.servers}
    assert len(zones) == 8
    assert all(0 <= s.failure_prob < 1 for s in a.servers)
    # what we write is what load_cluster reads back
    f = tmp_path / "big.yaml"
    f.write_text(cluster_yaml(a, servers=200, seed=0))
    again = load_cluster(f)
    assert again.servers == a.servers and again.overrides == a.overrides and again.ingress == a.ingress


def test_generated_zones_are_far_from_each_other():
    c = generate_cluster(60, seed=2)
    lat, bw = c._paths
    zone = np.array([s.labels["zone"] for s in c.servers])
    same = zone[:, None] == zone[None, :]
    off = ~np.eye(len(zone), dtype=bool)
    assert np.isfinite(lat).all()
    assert lat[same & off].max() < lat[~same].min()  # every LAN hop beats every WAN path
    assert bw[~same].max() < bw[same & off].min()


def test_generate_command_writes_a_checkable_file(tmp_path):
    out = tmp_path / "gen.yaml"
    r = CliRunner().invoke(main, ["cluster", "generate", "--servers", "30", "--seed", "4", "--out", str(out)])
    assert r.exit_code == 0 and "30 servers" in r.output and "seed 4" in r.output
    assert out.read_text().startswith("# generated by melplan.core.clustergen")
    assert CliRunner().invoke(main, ["cluster", "check", str(out)]).exit_code == 0
    printed = CliRunner().invoke(main, ["cluster", "generate", "--servers", "30", "--seed", "4"])
    assert printed.output == out.read_text()
    none = CliRunner().invoke(main, ["cluster", "generate", "--servers", "5", "--slo", "none"])
    assert none.exit_code == 0 and "latency_slo_ms" not in none.output


@pytest.mark.parametrize(
    "args",
    [["--servers", "0"], ["--servers", "x"], ["--servers", "5", "--slo", "-3"], ["--servers", "5", "--zones", "0"]],
)
def test_generate_rejects_bad_arguments(args):
    r = CliRunner().invoke(main, ["cluster", "generate"] + args)
    assert r.exit_code == 2


def test_generator_core_errors():
    with pytest.raises(InputError):
        generate_cluster(10, zones=11)
    with pytest.raises(InputError):
        generate_cluster(True)


def test_check_json_summary(tmp_path):
    import json

    f = tmp_path / "c.yaml"
    f.write_text(textwrap.dedent(GOOD))
    r = CliRunner().invoke(main, ["cluster", "check", str(f), "--json"])
    data = json.loads(r.output)
    assert data["valid"] and data["servers"] == 2 and data["ingress"] == "edge-a"
    assert math.isclose(data["max_path_latency_ms"], 8.0)


def test_parse_cluster_accepts_the_examples():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    c4 = load_cluster(root / "cluster-4.yaml")
    c12 = load_cluster(root / "edge-site-12.yaml")
    assert len(c4.servers) == 4 and c4.ingress == "edge-a"
    assert len(c12.servers) == 12 and c12.default_link is None and c12.workload.latency_slo_ms == 60
    assert len({s.labels["zone"] for s in c12.servers}) == 3
    assert parse_cluster(c12.to_dict()) == c12
