"""The Open Inference Protocol v2 (KServe v2 / Triton REST) on the wire: requests and responses,
JSON tensors and the binary tensor extension (no torch, no HTTP).

A request body is JSON, optionally followed by raw tensor bytes: then the HTTP header
``Inference-Header-Content-Length`` gives the JSON part's length and each input that travels in
binary carries ``"parameters": {"binary_data_size": n}``, its bytes following in input order
(row-major, little-endian). Responses use the same layout for outputs the client asked to get in
binary (``outputs[i].parameters.binary_data`` or the request parameter ``binary_data_output``).

Every input is checked before a model sees it: name, datatype, shape (against the declared
:class:`TensorSpec`, ``-1`` = any size), element count against the shape and byte size against
the datatype. A bad request raises :class:`ProtocolError` with its HTTP status (400, 404, 413);
the server turns it into ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melplan.core.errors import ProtocolError

HEADER_LENGTH = "Inference-Header-Content-Length"

# datatype name -> numpy dtype (little-endian, as the protocol's binary extension sends them)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DTYPE_NAMES = {v: k for k, v in DATATYPES.items()}
BYTES = "BYTES"  # variable-length elements: a JSON string each, or in binary a 4-byte little-endian length + bytes


def package_version() -> str:
    """melplan's installed version (server metadata); "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("melplan")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class TensorSpec:
    """What a model accepts or returns: a name, datatypes allowed, and a shape (-1 = any size)."""

    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...] | None  # None: any rank (the model checks the shape itself)
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatypes[0], "shape": list(self.shape or (-1,))}

    def matches(self, shape: Sequence[int]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(w == -1 or w == s for w, s in zip(self.shape, shape))


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: inputs as numpy arrays by name, and how the outputs should travel."""

    inputs: Mapping[str, np.ndarray]
    datatypes: Mapping[str, str]
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    requested: tuple[str, ...] | None = None  # output names asked for (None: all)
    binary_outputs: frozenset[str] = frozenset()  # outputs to send in binary
    binary_all: bool = False  # request parameter binary_data_output


def _bytes_binary(blob: bytes, count: int, where: str) -> np.ndarray:
    """Elements of a binary BYTES tensor (each a 4-byte little-endian length, then that many bytes)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(blob):
        if len(out) == count:
            raise ProtocolError(f"{where} has more than the {count} BYTES elements its shape holds")
        if pos + 4 > len(blob):
            raise ProtocolError(f"{where}: a BYTES element's 4-byte length is cut off")
        n = int.from_bytes(blob[pos : pos + 4], "little")
        if pos + 4 + n > len(blob):
            raise ProtocolError(f"{where}: a BYTES element of {n} bytes runs past binary_data_size")
        out.append(bytes(blob[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if len(out) != count:
        raise ProtocolError(f"{where} has {len(out)} BYTES elements, its shape holds {count}")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def _bytes_json(data: Any, count: int, where: str) -> np.ndarray:
    """Elements of a JSON BYTES tensor: strings (sent as their UTF-8 bytes)."""
    flat = _flat_json(data, count, where)
    if not all(isinstance(v, str) for v in flat):
        raise ProtocolError(f"{where}.data holds values that are not strings (datatype BYTES)")
    arr = np.empty(count, dtype=object)
    arr[:] = [v.encode("utf-8", "surrogatepass") for v in flat]
    return arr


def dtype_name(arr: np.ndarray) -> str:
    """The protocol datatype of a numpy array (raises ProtocolError for one it cannot carry)."""
    name = _DTYPE_NAMES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
    if name is None:
        raise ProtocolError(f"cannot send numpy dtype {arr.dtype} in the Open Inference Protocol", 500)
    return name


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be a whole number, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
        json_part, rest = body[:n], body[n:]
    try:
        obj = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("the request body must be a JSON object")
    return obj, rest


def _shape_of(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"{where}.shape must be a list of whole numbers, got {value!r}")
    if any(d < 0 for d in value):
        raise ProtocolError(f"{where}.shape has a negative size: {value}")
    return tuple(value)


def _flat_json(data: Any, count: int, where: str) -> list[Any]:
    """JSON tensor data (flat or nested, row-major) as a flat list of exactly ``count`` elements."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}.data must be a JSON list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > count:
                raise ProtocolError(f"{where}.data has more than the {count} elements its shape holds")
        else:
            stack.pop()
    if len(flat) != count:
        raise ProtocolError(f"{where}.data has {len(flat)} elements, its shape holds {count}")
    return flat


def _json_data(data: Any, dtype: np.dtype, count: int, where: str) -> np.ndarray:
    """Flatten JSON tensor data (flat or nested, row-major) and check its element count."""
    flat = _flat_json(data, count, where)
    if dtype.kind == "b":
        ok = all(isinstance(v, bool) for v in flat)
    elif dtype.kind in "iu":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
    if not ok:
        raise ProtocolError(f"{where}.data holds values that are not of datatype {_DTYPE_NAMES[dtype]}")
    try:
        arr = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"{where}.data does not fit datatype {_DTYPE_NAMES[dtype]} ({exc})") from None
    if dtype.kind in "iu":
        back = np.array(flat, dtype=object)
        if not np.array_equal(arr.astype(object), back):
            raise ProtocolError(f"{where}.data has values out of range for {_DTYPE_NAMES[dtype]}")
    return arr


def decode_request(
    body: bytes,
    header_length: str | None,
    specs: Sequence[TensorSpec],
    *,
    outputs: Sequence[str] = (),
) -> InferRequest:
    """Parse and check an infer request against the model's input specs (and known output names).

    Raises :class:`ProtocolError` (400) naming the input and what is wrong with it.
    """
    obj, binary = _split_body(body, header_length)
    by_name = {s.name: s for s in specs}
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    dts: dict[str, str] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise ProtocolError(f"{where} must be an object with name, datatype, shape and data")
        name = t.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"{where}.name must be a string")
        where = f"input '{name}'"
        spec = by_name.get(name)
        if spec is None:
            raise ProtocolError(f"unknown input '{name}'; this model takes {', '.join(sorted(by_name))}")
        if name in arrays:
            raise ProtocolError(f"input '{name}' is given twice")
        datatype = t.get("datatype")
        if datatype not in spec.datatypes:
            raise ProtocolError(f"{where} has datatype {datatype!r}; use {' or '.join(spec.datatypes)}")
        shape = _shape_of(t.get("shape"), where)
        if not spec.matches(shape):
            want = "[" + ", ".join("N" if w == -1 else str(w) for w in spec.shape or ()) + "]"
            raise ProtocolError(f"{where} has shape {list(shape)}; expected {want}")
        count = math.prod(shape)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"{where}.parameters must be an object")
        size = params.get("binary_data_size")
        if datatype == BYTES:
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise ProtocolError(f"{where}.parameters.binary_data_size must be a whole number")
                if offset + size > len(binary):
                    raise ProtocolError(f"{where}: the body ends before its {size} binary bytes")
                if "data" in t:
                    raise ProtocolError(f"{where} has both binary data and a 'data' field")
                arr = _bytes_binary(binary[offset : offset + size], count, where)
                offset += size
            elif "data" not in t:
                raise ProtocolError(f"{where} has no 'data' (and no binary_data_size)")
            else:
                arr = _bytes_json(t["data"], count, where)
            arrays[name] = arr.reshape(shape)
            dts[name] = datatype
            continue
        dtype = DATATYPES[datatype]
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}.parameters.binary_data_size must be a whole number")
            if size != count * dtype.itemsize:
                raise ProtocolError(
                    f"{where} sends {size} bytes but shape {list(shape)} of {datatype} needs {count * dtype.itemsize}"
                )
            if offset + size > len(binary):
                raise ProtocolError(f"{where}: the body ends before its {size} binary bytes")
            arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
            offset += size
            if "data" in t:
                raise ProtocolError(f"{where} has both binary data and a 'data' field")
        else:
            if "data" not in t:
                raise ProtocolError(f"{where} has no 'data' (and no binary_data_size)")
            arr = _json_data(t["data"], dtype, count, where)
        arrays[name] = arr.reshape(shape)
        dts[name] = datatype
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed")
    missing = [s.name for s in specs if not s.optional and s.name not in arrays]
    if missing:
        raise ProtocolError(f"missing input(s) {missing}")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    requested: tuple[str, ...] | None = None
    binary_outputs: set[str] = set()
    if "outputs" in obj:
        outs = obj["outputs"]
        if not isinstance(outs, list):
            raise ProtocolError("'outputs' must be a list")
        names = []
        for j, o in enumerate(outs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError(f"outputs[{j}] must be an object with a name")
            if outputs and o["name"] not in outputs:
                raise ProtocolError(f"unknown output '{o['name']}'; this model returns {', '.join(outputs)}")
            names.append(o["name"])
            if (o.get("parameters") or {}).get("binary_data"):
                binary_outputs.add(o["name"])
        requested = tuple(names)
    rid = obj.get("id")
    return InferRequest(
        arrays,
        dts,
        None if rid is None else str(rid),
        params,
        requested,
        frozenset(binary_outputs),
        bool(params.get("binary_data_output", False)),
    )


def encode_response(
    model: str,
    outputs: Mapping[str, np.ndarray],
    *,
    request: InferRequest | None = None,
    parameters: Mapping[str, Any] | None = None,
    version: str = "1",
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers of an infer response (binary outputs when the request asked)."""
    names = list(outputs) if request is None or request.requested is None else list(request.requested)
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if request is not None and request.id is not None:
        head["id"] = request.id
    if parameters:
        head["parameters"] = dict(parameters)
    tensors, blobs = [], []
    for name in names:
        arr = np.ascontiguousarray(outputs[name])
        t: dict[str, Any] = {"name": name, "datatype": dtype_name(arr), "shape": list(arr.shape)}
        if request is not None and (request.binary_all or name in request.binary_outputs):
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    head["outputs"] = tensors
    js = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return js, {"Content-Type": "application/json"}
    return js + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(js))}


def encode_request(
    inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] = (), binary: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request (what the gateway sends to a component)."""
    tensors, blobs = [], []
    for name, arr in inputs.items():
        arr = np.ascontiguousarray(arr)
        t: dict[str, Any] = {"name": name, "datatype": dtype_name(arr), "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    head: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        head["id"] = request_id
    if outputs:
        head["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    elif binary:
        head["parameters"] = {"binary_data_output": True}
    js = json.dumps(head, separators=(",", ":")).encode()
    if not binary:
        return js, {"Content-Type": "application/json"}
    return js + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(js))}


def decode_response(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse an infer response into (its JSON head, outputs by name). Raises ProtocolError (502)."""
    try:
        head, binary = _split_body(body, header_length)
    except ProtocolError as exc:
        raise ProtocolError(f"bad response: {exc.message}", 502) from None
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in head.get("outputs") or []:
        try:
            dtype = DATATYPES[t["datatype"]]
            shape = tuple(int(d) for d in t["shape"])
            size = (t.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arr = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
                offset += int(size)
            else:
                arr = np.asarray(t["data"], dtype=dtype)
            out[t["name"]] = arr.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad response tensor: {exc}", 502) from None
    return head, out
