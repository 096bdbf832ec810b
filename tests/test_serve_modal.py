"""`melplan serve` on audio (FSDD) and text (TREC) plans with raw client input: audio clips as INT16 or
FP32 [N, samples], sentences as BYTES [N], through the official client (tritonclient[http], binary and
JSON tensors).  The oracle is the family's network run here in-process on the input training built from
the same recordings and sentences (melplan.train.data.load_dataset), so the gateway's preprocessing is
checked against training's, end to end.  One deployment at a time (a parametrized module fixture)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from serving import ROOT, make_plan, post, serving

N = 40
pytestmark = [pytest.mark.torch]

httpclient = pytest.importorskip("tritonclient.http")

FAMILIES = {"fsdd": "fsdd-dscnn-u2-b3b3-fc-l2-2-1-s0", "trec": "trec-textcnn-u2-b3b3-fc-l2-2-1-s0"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def served(request, tmp_path_factory):
    """A running `melplan serve` of a 2-upstream family of the dataset, plus the test inputs: raw (what a
    client sends) and as training built them, with the labels the family's network gives in-process."""
    import torch

    from melplan.core.catalog import load_catalog
    from melplan.train.data import load_dataset
    from melplan.train.trainer import load_weights

    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    plan = make_plan(tmp / "plan.json", "--catalog", str(ROOT / "catalog" / name), "--family", FAMILIES[name])
    if name == "fsdd":
        from melplan.train.datasets.audio import read_recordings

        clips = [r[3] for r in read_recordings(ROOT / "data" / "fsdd") if r[2] <= 4][:N]  # the test split's order
        raw = np.zeros((N, 8000), dtype=np.int16)  # 1 s at 8 kHz: longer clips are cut, shorter zero-padded
        for i, c in enumerate(clips):
            raw[i, : min(8000, len(c))] = np.round(c[:8000] * 32768.0).astype(np.int16)
    else:
        from melplan.train.datasets.text import read_labelled

        texts, _ = read_labelled(ROOT / "data" / "trec" / "TREC.test.all", 6)
        raw = np.array([t.encode("utf-8") for t in texts[:N]], dtype=object)
    ds = load_dataset(name, test_limit=N)
    fam = load_catalog(ROOT / "catalog" / name).get(FAMILIES[name])
    with torch.inference_mode():
        out, _ = load_weights(fam)(ds.test.images)
    oracle = {k: v.argmax(1).numpy() for k, v in out.items()}

    with serving(plan, tmp) as info:
        yield {"name": name, "dep": info["dep"], "raw": raw, "oracle": oracle, "truth": ds.test.labels.numpy()}


def _infer(served, x, datatype, *, binary=True):
    client = httpclient.InferenceServerClient(served["dep"]["gateway"]["url"].split("//")[1])
    inp = httpclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
    return client.infer(served["dep"]["model"], [inp], outputs=outs)


def _two_answers_of_one_subset(served, first, second):
    """The labels of two requests (x, datatype) answered by the same subset: on a busy machine the
    hedge may answer one of them through another subset, so a few tries are allowed."""
    for _ in range(5):
        a, b = _infer(served, *first), _infer(served, *second)
        subsets = [r.get_response()["parameters"]["subset"] for r in (a, b)]
        if subsets[0] == subsets[1]:
            return a.as_numpy("label"), b.as_numpy("label")
    raise AssertionError(f"5 pairs of answers, never both through one subset: last {subsets}")


def _post(served, body: dict):
    return post(
        served["dep"]["gateway"]["url"] + f"/v2/models/{served['dep']['model']}/infer", json.dumps(body).encode()
    )


def test_raw_input_gives_the_networks_answers(served):
    raw = served["raw"]
    datatype = "INT16" if served["name"] == "fsdd" else "BYTES"
    r = _infer(served, raw, datatype)
    p = r.get_response()["parameters"]
    assert p["degraded"] is False and "+" in p["subset"]  # every server up: the combiner answers
    got = r.as_numpy("label")
    want = served["oracle"][p["subset"]]
    assert (got == want).mean() >= 1 - 1 / N  # training's input and the gateway's: the same network answers
    assert abs((got == served["truth"]).mean() - (want == served["truth"]).mean()) <= 1 / N
    # JSON tensors carry the same input
    r2 = _infer(served, raw[:8], datatype, binary=False)
    np.testing.assert_array_equal(r2.as_numpy("label"), got[:8])


def test_audio_as_fp32_samples_and_model_input_agree(served):
    if served["name"] != "fsdd":
        pytest.skip("audio only")
    raw = served["raw"][:8]
    a, b = _two_answers_of_one_subset(served, (raw, "INT16"), (raw.astype(np.float32) / 32768.0, "FP32"))
    np.testing.assert_array_equal(a, b)


def test_text_as_token_ids_agrees_and_bad_ids_get_400(served):
    if served["name"] != "trec":
        pytest.skip("text only")
    from melplan.train.data import load_dataset

    ids = load_dataset("trec", test_limit=8).test.images.numpy().astype(np.int64)
    a, b = _two_answers_of_one_subset(served, (served["raw"][:8], "BYTES"), (ids, "INT64"))
    np.testing.assert_array_equal(a, b)
    bad = ids[:1].copy()
    bad[0, 0] = 10**6
    status, out = _post(
        served, {"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 40], "data": bad.ravel().tolist()}]}
    )
    assert status == 400 and "token ids" in out["error"]


@pytest.mark.parametrize(
    "kind, tensor, fragment",
    [
        ("fsdd", {"name": "input", "datatype": "INT16", "shape": [1, 2, 3], "data": [0] * 6}, "shape"),
        ("fsdd", {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}, "datatype"),
        ("fsdd", {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, "x", 0.0]}, "FP32"),
        ("trec", {"name": "input", "datatype": "BYTES", "shape": [2], "data": ["a question ?", 3]}, "strings"),
        ("trec", {"name": "input", "datatype": "BYTES", "shape": [1], "data": ["   "]}, "sentence"),
        ("trec", {"name": "input", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}, "shape"),
        ("trec", {"name": "input", "datatype": "FP32", "shape": [1, 40], "data": [0.0] * 40}, "datatype"),
    ],
)
def test_malformed_raw_input_gets_400(served, kind, tensor, fragment):
    if served["name"] != kind:
        pytest.skip(f"{kind} only")
    status, out = _post(served, {"inputs": [tensor]})
    assert status == 400 and fragment in out["error"], out
    assert httpclient.InferenceServerClient(served["dep"]["gateway"]["url"].split("//")[1]).is_server_live()


def test_binary_bytes_elements_must_fill_the_declared_size(served):
    if served["name"] != "trec":
        pytest.skip("text only")
    blob = (5).to_bytes(4, "little") + b"who i"  # one whole element, then a cut-off length
    head = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob) + 2}}
            ]
        }
    ).encode()
    url = served["dep"]["gateway"]["url"] + f"/v2/models/{served['dep']['model']}/infer"
    req = urllib.request.Request(
        url,
        data=head + blob + b"\x01\x00",
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and "cut off" in json.loads(err.value.read())["error"]
