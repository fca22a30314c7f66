"""Opening GGUF files: the fast parser against gguf-py's GGUFReader, zero-copy weights, and bad
files (truncated, not GGUF, wrong architecture, missing/misshapen tensors, unsupported types,
missing hyperparameters), which must give one clear EdgeQwenError, never a crash.

Bad files are written with gguf-py's GGUFWriter from what gguf-py's GGUFReader read out of a fixture
(an unmodified copy is byte-identical to the fixture), then changed in one place."""
from __future__ import annotations

import mmap

import gguf
import numpy as np
import pytest

import edgeqwen
from edgeqwen.config import Qwen3Config
from edgeqwen.errors import EdgeQwenError
from edgeqwen.gguf_model import ModelFile
from edgeqwen.gguf_reader import GGUFFile

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
HEADER_BYTES = 24        # magic, version (u32), tensor count (u64), kv count (u64)


# ---------------------------------------------------------------- fixtures and helpers

class _PlainGGUFReader(gguf.GGUFReader):
    """gguf-py's GGUFReader, parsing code unchanged, over a plain ndarray view of its np.memmap:
    np.memmap's per-slice overhead makes the stock reader ~3x slower on a 151,936-token vocabulary."""

    @property
    def data(self):
        return self._plain

    @data.setter
    def data(self, value):
        self._plain = np.asarray(value)


@pytest.fixture(scope="module")
def fixture_path(gguf_file):
    return gguf_file("tiny", "q8_0")


@pytest.fixture(scope="module")
def reference(fixture_path):
    """gguf-py's view of the fixture: key -> (value, type, array element type), tensors in file
    order as (name, type, numpy shape, bytes, absolute data offset). Parsed once: GGUFReader takes
    many seconds on the 151,936-token vocabulary."""
    r = _PlainGGUFReader(fixture_path)
    meta = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = (f.contents(), f.types[0], f.types[-1] if f.types[0] == VT.ARRAY else None)
    tensors = []
    for t in r.tensors:
        raw = np.array(t.data).view(np.uint8)          # (rows, bytes per row); a vector is one row
        tensors.append((t.name, QT(t.tensor_type), tuple(int(d) for d in reversed(t.shape)),
                        raw.reshape(1, -1) if raw.ndim == 1 else raw, int(t.data_offset)))
    fields = {key: f.offset for key, f in r.fields.items()}
    infos = [t.field.offset for t in r.tensors]
    return {"meta": meta, "tensors": tensors, "field_offsets": fields, "info_offsets": infos}


def write_gguf(path, meta, tensors, *, arch="qwen3", drop_keys=(), set_keys=None, drop_tensors=(),
               replace=None):
    """Write `meta` (key -> (value, type, subtype)) and `tensors` with gguf-py, changed as asked.
    replace: name -> (raw uint8 bytes of shape (rows, bytes_per_row), GGML type) or a float32 array."""
    set_keys, replace = set_keys or {}, replace or {}
    w = gguf.GGUFWriter(path, arch)
    for key, (value, vtype, sub) in meta.items():
        if key == gguf.Keys.General.ARCHITECTURE or key in drop_keys:
            continue
        if key in set_keys:
            value, vtype = set_keys[key]
        w.add_key_value(key, value, vtype, sub_type=sub)
    for key, (value, vtype) in set_keys.items():
        if key not in meta:
            w.add_key_value(key, value, vtype)
    for name, qtype, _shape, raw, _off in tensors:
        if name in drop_tensors:
            continue
        if name in replace:
            new = replace[name]
            if isinstance(new, tuple):
                raw, qtype = new
            else:
                raw, qtype = np.ascontiguousarray(new, np.float32).view(np.uint8), QT.F32
        data = raw if qtype != QT.F32 else raw.view(np.float32)
        if qtype == QT.F32 and data.shape[0] == 1 and len(_shape) == 1:
            data = data.reshape(-1)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_error(path, api=False) -> str:
    """The one-line EdgeQwenError message of opening `path` (api=True: also through edgeqwen.load,
    which must raise the same)."""
    with pytest.raises(EdgeQwenError) as e:
        ModelFile(path)
    msg = str(e.value)
    if api:
        with pytest.raises(EdgeQwenError) as e2:
            edgeqwen.load(path)
        assert str(e2.value) == msg
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- parser vs gguf-py, zero copy

def test_parser_matches_gguf_py_reader(fixture_path, reference):
    g = GGUFFile(fixture_path)
    meta = reference["meta"]
    assert list(g.metadata) == list(meta)
    for key, (value, _vtype, _sub) in meta.items():
        assert g.metadata[key] == value, key
    assert len(meta["tokenizer.ggml.tokens"][0]) == 151936
    assert [t[0] for t in reference["tensors"]] == list(g.tensors)
    for name, qtype, shape, raw, offset in reference["tensors"]:
        ours = g.tensors[name]
        assert (ours.qtype, ours.shape, ours.offset) == (qtype, shape, offset), name
        assert ours.nbytes == raw.size
        assert np.array_equal(ours.raw().reshape(-1), raw.reshape(-1)), name


def test_unmodified_gguf_py_copy_is_the_fixture(fixture_path, reference, tmp_path):
    """Sanity check of the bad-file machinery: with no change, write_gguf reproduces the file."""
    out = write_gguf(tmp_path / "copy.gguf", reference["meta"], reference["tensors"])
    assert out.read_bytes() == fixture_path.read_bytes()


def test_parser_matches_gguf_py_on_every_value_type_and_custom_alignment(tmp_path):
    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_custom_alignment(64)
    values = {
        "t.u8": (200, VT.UINT8), "t.i8": (-100, VT.INT8), "t.u16": (65000, VT.UINT16), "t.i16": (-32000, VT.INT16),
        "t.u32": (4_000_000_000, VT.UINT32), "t.i32": (-2_000_000_000, VT.INT32), "t.f32": (0.1, VT.FLOAT32),
        "t.bool": (True, VT.BOOL), "t.str": ("héllo ✓", VT.STRING), "t.u64": (2**63 + 5, VT.UINT64),
        "t.i64": (-(2**62), VT.INT64), "t.f64": (0.1, VT.FLOAT64), "t.empty": ("", VT.STRING),
    }
    for k, (v, t) in values.items():
        w.add_key_value(k, v, t)
    arrays = {"a.i32": ([1, -2, 3], VT.INT32), "a.f32": ([0.5, -1.25], VT.FLOAT32),
              "a.str": (["a", "", "ü", "<|im_end|>"], VT.STRING), "a.bool": ([True, False, True], VT.BOOL),
              "a.u8": ([0, 255], VT.UINT8)}
    for k, (v, t) in arrays.items():
        w.add_key_value(k, v, VT.ARRAY, sub_type=t)
    rng = np.random.default_rng(0)
    w.add_tensor("odd", rng.standard_normal(3).astype(np.float32))                 # forces padding
    w.add_tensor("m16", rng.standard_normal((5, 7)).astype(np.float16))
    w.add_tensor("q", rng.integers(0, 256, (4, 2 * 34), dtype=np.uint8), raw_dtype=QT.Q8_0)
    w.add_tensor("three_d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(path)
    g = GGUFFile(path)
    ref_meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert g.metadata == ref_meta
    assert g.metadata["general.alignment"] == 64
    assert g.metadata["t.u64"] == 2**63 + 5 and g.metadata["t.str"] == "héllo ✓"
    assert g.metadata["a.str"] == ["a", "", "ü", "<|im_end|>"]
    assert [t.name for t in r.tensors] == list(g.tensors)
    for t in r.tensors:
        ours = g.tensors[t.name]
        assert ours.offset == t.data_offset and ours.offset % 64 == 0
        assert ours.qtype == QT(t.tensor_type)
        assert ours.shape == tuple(int(d) for d in reversed(t.shape))
        assert ours.raw().tobytes() == np.asarray(t.data).tobytes()
    assert g.tensors["q"].shape == (4, 64) and g.tensors["q"].raw().shape == (4, 68)


@pytest.mark.parametrize("strings, patch", [
    (["a", "b\x00c", "", "\x00"], None),                        # NUL inside strings: no fast split
    (["ok", "QQQQ", "é", "tail"], (b"QQQQ", b"\xff\xfeQ\xc3")),    # invalid UTF-8 in one string
    ([f"t{i}" for i in range(1000)] + ["ü"], None),
])
def test_string_arrays_decode_like_gguf_py(tmp_path, strings, patch):
    """Strings are decoded one by one (errors replaced) whatever the array holds (the vocabulary's fast
    path splits one decoded run at NULs, so NULs and bad UTF-8 must fall back)."""
    path = tmp_path / "strings.gguf"
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_key_value("a.str", strings, VT.ARRAY, sub_type=VT.STRING)
    w.add_tensor("w", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if patch:
        path.write_bytes(path.read_bytes().replace(*patch))
    field = gguf.GGUFReader(path).fields["a.str"]
    expected = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    assert GGUFFile(path).metadata["a.str"] == expected
    assert len(expected) == len(strings)


def test_weights_are_zero_copy_read_only_views_of_the_mmap(fixture_path, reference):
    model = edgeqwen.load(fixture_path, ctx_size=8, threads=1)
    q = model.file.layers[0].q
    raw = q.raw
    base = raw
    while isinstance(base, np.ndarray):
        assert base.flags.owndata is False
        base = base.base
    if isinstance(base, memoryview):           # np.frombuffer keeps a memoryview of the buffer
        base = base.obj
    assert isinstance(base, mmap.mmap)
    assert base is model.file.gguf._mm
    assert not raw.flags.writeable
    with pytest.raises(ValueError):
        raw[0, 0] = 1
    name, qtype, shape, ref_raw, offset = next(t for t in reference["tensors"] if t[0] == "blk.0.attn_q.weight")
    assert q.qtype == qtype == QT.Q8_0 and (q.rows, q.cols) == shape
    # The view sits exactly at the tensor's offset in the file mapping.
    addr = np.frombuffer(base, np.uint8).ctypes.data
    assert raw.ctypes.data - addr == offset
    assert np.array_equal(raw, ref_raw)
    emb = model.file.token_embd.raw
    assert np.shares_memory(emb, np.frombuffer(base, np.uint8)) and not emb.flags.writeable


# ---------------------------------------------------------------- truncated and non-GGUF files

def _cut_points(reference, size):
    f, infos, tensors = reference["field_offsets"], reference["info_offsets"], reference["tensors"]
    tok = f["tokenizer.ggml.tokens"]
    points = {
        "header: inside the version": 6,
        "header: inside the tensor count": 12,
        "header: inside the kv count": 20,
        "header: end": HEADER_BYTES,
        "kv: inside the first key": HEADER_BYTES + 5,
        "kv: inside general.name": f["general.name"] + 10,
        "kv: inside the token array header": tok + 8 + len("tokenizer.ggml.tokens") + 4 + 3,
        "kv: inside the token strings": tok + 500_000,
        "kv: inside the merges": f["tokenizer.ggml.merges"] + 1_000_000,
        "kv: inside the chat template": f["tokenizer.chat_template"] + 100,
        "tensor infos: first": infos[0] + 3,
        "tensor infos: inside the dims": infos[5] + 8 + len(tensors[5][0]) + 6,
        "tensor infos: last": infos[-1] + 20,
    }
    for name, _q, _s, raw, off in (tensors[0], tensors[3], tensors[-1]):
        points[f"data: {name}"] = (off + raw.size // 2, name)
    points[f"data: start of {tensors[-1][0]}"] = (tensors[-1][4] + 1, tensors[-1][0])
    out = []
    for label, p in points.items():
        cut, tensor = p if isinstance(p, tuple) else (p, None)
        assert 0 < cut < size
        out.append((label, cut, tensor))
    return out


def test_truncated_files_give_a_clear_error(fixture_path, reference, tmp_path):
    data = fixture_path.read_bytes()
    cuts = _cut_points(reference, len(data))
    assert len(cuts) >= 17
    for label, cut, tensor in cuts:
        p = tmp_path / f"cut-{cut}.gguf"
        p.write_bytes(data[:cut])
        msg = load_error(p, api=tensor is not None)
        assert str(p) in msg, label
        assert "truncated" in msg, (label, msg)
        if tensor is not None:
            assert f"tensor {tensor!r} " in msg, (label, msg)
        p.unlink()


def test_every_short_prefix_is_an_error(fixture_path, tmp_path):
    """Every cut in the first 256 bytes (header and first keys), including within the magic."""
    data = fixture_path.read_bytes()[:256]
    p = tmp_path / "short.gguf"
    for cut in range(256):
        p.write_bytes(data[:cut])
        with pytest.raises(EdgeQwenError) as e:
            GGUFFile(p)
        msg = str(e.value)
        assert str(p) in msg
        if cut >= 4:
            assert "truncated" in msg, (cut, msg)
        else:
            assert "not a GGUF file" in msg, (cut, msg)


def test_not_gguf_files(tmp_path):
    rnd = tmp_path / "random.gguf"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a GGUF file" in load_error(rnd, api=True) and "magic" in load_error(rnd)
    text = tmp_path / "model.safetensors"
    text.write_bytes(b'{"__metadata__": {}}' + b" " * 100)
    assert "not a GGUF file" in load_error(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in load_error(empty) and "0 bytes" in load_error(empty)
    d = tmp_path / "adir.gguf"
    d.mkdir()
    assert load_error(d) == f"{d}: is a directory, expected a .gguf file"
    missing = tmp_path / "nope" / "missing.gguf"
    assert load_error(missing, api=True) == f"{missing}: no such file"


def test_bad_version_and_absurd_counts(fixture_path, tmp_path):
    head = bytearray(fixture_path.read_bytes()[:4096])
    v = tmp_path / "v9.gguf"
    v.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(head[8:]))
    assert "version 9" in load_error(v)
    big = tmp_path / "big.gguf"
    big.write_bytes(bytes(head[:16]) + (2**40).to_bytes(8, "little") + bytes(head[24:]))
    msg = load_error(big)
    assert "corrupt" in msg and str(2**40) in msg


def _small_gguf(path, arch="qwen3", alignment=None, tensors=(("w", np.zeros((2, 32), np.float32)),)):
    w = gguf.GGUFWriter(path, arch)
    if alignment is not None:
        w.add_key_value(gguf.Keys.General.ALIGNMENT, alignment, VT.UINT32)
    for name, a in tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_invalid_alignment_is_an_error(tmp_path, alignment):
    # The writer lays the file out with its default 32; the key claims something impossible.
    p = _small_gguf(tmp_path / "align.gguf", alignment=alignment)
    with pytest.raises(EdgeQwenError) as e:
        GGUFFile(p)
    assert "general.alignment" in str(e.value) and str(alignment) in str(e.value)


def test_tensor_dims_overflowing_int64_are_caught(tmp_path):
    """Dims whose product overflows a 64-bit integer must not slip past the bounds check."""
    p = _small_gguf(tmp_path / "dims.gguf", tensors=(("huge", np.zeros((2, 32), np.float32)),))
    data = bytearray(p.read_bytes())
    # tensor info: name (u64 len + bytes), n_dims u32, dims u64 x n, type u32, offset u64
    at = data.index(b"huge") + 4
    assert int.from_bytes(data[at:at + 4], "little") == 2
    data[at + 4:at + 12] = (2**32).to_bytes(8, "little")
    data[at + 12:at + 20] = (2**32).to_bytes(8, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(EdgeQwenError) as e:
        GGUFFile(p)
    assert "tensor 'huge'" in str(e.value)


# ---------------------------------------------------------------- valid GGUF, not a usable Qwen3

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_wrong_architecture(tmp_path, arch):
    p = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(p, arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((10, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = load_error(p, api=True)
    assert msg == f"{p}: architecture {arch!r} is not supported (expected 'qwen3' or 'qwen3moe')"


@pytest.mark.parametrize("drop", ["blk.1.ffn_up.weight", "token_embd.weight"])
def test_missing_tensor(reference, tmp_path, drop):
    p = write_gguf(tmp_path / "missing.gguf", reference["meta"], reference["tensors"], drop_tensors=[drop])
    msg = load_error(p)
    assert str(p) in msg and f"missing tensor {drop}" in msg


def test_wrong_shape(reference, tmp_path):
    name = "blk.0.attn_k.weight"          # (kv_heads * head_dim, hidden) = (64, 64)
    raw = next(t[3] for t in reference["tensors"] if t[0] == name)
    p = write_gguf(tmp_path / "shape.gguf", reference["meta"], reference["tensors"],
                   replace={name: (np.ascontiguousarray(raw[:32]), QT.Q8_0)})
    msg = load_error(p)
    assert f"tensor {name} has shape [64, 32], expected [64, 64]" in msg


def _ffn256(reference, down_types):
    """The fixture with feed_forward_length 256 (so 256-wide blocks fit ffn_down's rows): new random
    ffn tensors, ffn_down of layer i stored as down_types[i] (random bytes for non-float types)."""
    rng = np.random.default_rng(5)
    replace = {}
    for i, qtype in enumerate(down_types):
        replace[f"blk.{i}.ffn_gate.weight"] = rng.standard_normal((256, 64)).astype(np.float32) * 0.05
        replace[f"blk.{i}.ffn_up.weight"] = rng.standard_normal((256, 64)).astype(np.float32) * 0.05
        if qtype == QT.F32:
            replace[f"blk.{i}.ffn_down.weight"] = rng.standard_normal((64, 256)).astype(np.float32) * 0.05
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            replace[f"blk.{i}.ffn_down.weight"] = (
                rng.integers(0, 256, (64, 256 // block * size), dtype=np.uint8), qtype)
    return dict(set_keys={"qwen3.feed_forward_length": (256, VT.UINT32)}, replace=replace)


def test_unsupported_types_are_named(reference, tmp_path):
    # Control: the same construction with F32 ffn_down loads and runs.
    ok = write_gguf(tmp_path / "ok.gguf", reference["meta"], reference["tensors"],
                    **_ffn256(reference, [QT.F32, QT.F32]))
    m = edgeqwen.load(ok, ctx_size=8, threads=1)
    assert m.config.n_ff == 256
    assert np.isfinite(m.logits([1, 2, 3])).all()

    # ternary and IQ ffn_down matrices (256-value blocks), plus a 32-value-block type (MXFP4).
    kw = _ffn256(reference, [QT.TQ1_0, QT.IQ2_XS])
    block, size = gguf.GGML_QUANT_SIZES[QT.MXFP4]
    kw["replace"]["blk.1.attn_v.weight"] = (
        np.random.default_rng(1).integers(0, 256, (64, 64 // block * size), dtype=np.uint8), QT.MXFP4)
    p = write_gguf(tmp_path / "k.gguf", reference["meta"], reference["tensors"], **kw)
    msg = load_error(p, api=True)
    assert msg.startswith(f"{p}: unsupported tensor types: ")
    for name, qtype in [("blk.0.ffn_down.weight", "TQ1_0"), ("blk.1.ffn_down.weight", "IQ2_XS"),
                        ("blk.1.attn_v.weight", "MXFP4")]:
        assert f"{name} ({qtype})" in msg
    assert msg.endswith("(supported: " + ", ".join(SUPPORTED) + ")")


def test_quantized_norm_is_refused(reference, tmp_path):
    name = "blk.0.attn_norm.weight"
    raw = np.random.default_rng(2).integers(0, 256, 2 * 34, dtype=np.uint8)      # 1-D: 64 values
    p = write_gguf(tmp_path / "n.gguf", reference["meta"], reference["tensors"], replace={name: (raw, QT.Q8_0)})
    msg = load_error(p)
    assert f"norm tensor {name} has type Q8_0, expected F32" in msg


def test_missing_hyperparameter_in_a_file(reference, tmp_path):
    key = "qwen3.attention.head_count"
    p = write_gguf(tmp_path / "nokey.gguf", reference["meta"], reference["tensors"], drop_keys=[key])
    assert load_error(p) == f"{p}: missing metadata key {key}"


@pytest.mark.parametrize("key", ["qwen3.embedding_length", "qwen3.attention.head_count",
                                 "qwen3.feed_forward_length", "qwen3.block_count"])
def test_required_hyperparameters(fixture_path, key):
    md = dict(GGUFFile(fixture_path).metadata)
    Qwen3Config.from_metadata(md, "src", 151936)      # complete metadata is fine
    del md[key]
    with pytest.raises(EdgeQwenError, match=rf"^src: missing metadata key {key}$"):
        Qwen3Config.from_metadata(md, "src", 151936)
    for bad in (0, -3, "64", 2.5, True):
        md[key] = bad
        with pytest.raises(EdgeQwenError, match=rf"^src: metadata key {key} = .*expected a positive integer"):
            Qwen3Config.from_metadata(md, "src", 151936)


def test_optional_hyperparameters_default(fixture_path):
    md = dict(GGUFFile(fixture_path).metadata)
    for k in ("qwen3.attention.key_length", "qwen3.attention.value_length", "qwen3.attention.head_count_kv",
              "qwen3.context_length", "qwen3.rope.freq_base", "qwen3.attention.layer_norm_rms_epsilon"):
        del md[k]
    c = Qwen3Config.from_metadata(md, "src", 151936)
    assert (c.head_dim, c.n_head_kv, c.n_ctx_train, c.rope_base, c.rms_eps) == (64 // 4, 4, 32768, 1e6, 1e-6)


# ---------------------------------------------------------------- validation at the door (issue 12)
# On the fuzz corpus's small model (tests/fuzz_gguf.py: 288-token vocabulary, loads in milliseconds),
# written by a serializer that writes whatever it is told.

import math as _math  # noqa: E402
import re  # noqa: E402
import time as _time  # noqa: E402

from fuzz_gguf import auto_type, base_spec, serialize  # noqa: E402

from edgeqwen import constants as C  # noqa: E402


@pytest.fixture(scope="module")
def small_spec():
    return base_spec()


def _write_spec(tmp_path, spec, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(serialize(spec))
    return p


def _with(spec, **changes):
    import copy
    s = copy.deepcopy(spec)
    for key, value in changes.get("keys", {}).items():
        s.set(key, *auto_type(value))
    return s


def test_small_base_model_loads_and_generates(small_spec, tmp_path):
    m = edgeqwen.load(_write_spec(tmp_path, small_spec), threads=1)
    r = m.generate("Once upon a time", max_tokens=3, temperature=0)
    assert len(r.token_ids) == 3 and np.isfinite(m.logits([1, 2, 3])).all()


@pytest.mark.parametrize("key, value, expected", [
    (C.KEY_BLOCK_COUNT, 2**32 - 1, "expected a positive integer <= 4096"),
    (C.KEY_BLOCK_COUNT, 3, "block_count = 3, but the file has tensors of only 2 layers"),
    (C.KEY_EMBEDDING_LENGTH, 2**63 - 1, "expected a positive integer <= 65536"),
    (C.KEY_CONTEXT_LENGTH, 2**40, "expected a positive integer <= 16777216"),
    (C.KEY_HEAD_COUNT_KV, 3, "head_count 4 is not a multiple of head_count_kv 3"),
    (C.KEY_HEAD_COUNT, 1.5, "= 1.5, expected a positive integer"),
    (C.KEY_ROPE_FREQ_BASE, 0.0, "rope.freq_base = 0.0, expected a number in (1, 1e+12]"),
    (C.KEY_ROPE_FREQ_BASE, float("nan"), "= nan, expected a finite number"),
    (C.KEY_ROPE_FREQ_BASE, -1.0, "expected a number in (1, 1e+12]"),
    (C.KEY_ROPE_FREQ_BASE, "1e6", "= '1e6', expected a number"),
    (C.KEY_RMS_EPS, float("inf"), "= inf, expected a finite number"),
    (C.KEY_RMS_EPS, -1.0, "expected a number in [1e-30, 1]"),
    (C.KEY_RMS_EPS, 1e-300, "expected a number in [1e-30, 1]"),
    (C.KEY_RMS_EPS, True, "= True, expected a number"),
    (gguf.Keys.General.SAMPLING_TEMP, "hot", "general.sampling.temp = 'hot', expected a number in [0, inf]"),
    (gguf.Keys.General.SAMPLING_TEMP, float("nan"), "general.sampling.temp = nan"),
    (gguf.Keys.General.SAMPLING_TOP_P, 2.0, "general.sampling.top_p = 2.0, expected a number in (0, 1]"),
    (gguf.Keys.General.SAMPLING_TOP_K, 1.5, "general.sampling.top_k = 1.5, expected an integer"),
    (C.KEY_CHAT_TEMPLATE, 5, "tokenizer.chat_template = 5, expected a string"),
])
def test_hyperparameters_are_checked_at_load(small_spec, tmp_path, key, value, expected):
    p = _write_spec(tmp_path, _with(small_spec, keys={key: value}))
    msg = load_error(p, api=True)
    assert msg.startswith(f"{p}: ") and expected in msg, msg


@pytest.mark.parametrize("factor, orig, extra, expected", [
    (0.0, 64, {}, "rope.scaling.factor = 0.0, expected a number in [1, 10000]"),
    (float("nan"), 64, {}, "rope.scaling.factor = nan, expected a finite number"),
    ("4", 64, {}, "rope.scaling.factor = '4', expected a number"),
    (4.0, 0, {}, "original_context_length = 0, expected a positive integer"),
    (4.0, 64, {C.KEY_ROPE_YARN_BETA_FAST: -1.0}, "beta_fast = -1.0, expected a number in [0.001, 10000]"),
    (4.0, 64, {C.KEY_ROPE_YARN_ATTN_FACTOR: float("inf")}, "attn_factor = inf, expected a finite number"),
])
def test_yarn_parameters_are_checked(small_spec, tmp_path, factor, orig, extra, expected):
    keys = {C.KEY_ROPE_SCALING_TYPE: "yarn", C.KEY_ROPE_SCALING_FACTOR: factor, C.KEY_ROPE_SCALING_ORIG_CTX: orig,
            **extra}
    assert expected in load_error(_write_spec(tmp_path, _with(small_spec, keys=keys)))
    ok = {**keys, C.KEY_ROPE_SCALING_FACTOR: 4.0, C.KEY_ROPE_SCALING_ORIG_CTX: 64}
    ok = {k: v for k, v in ok.items() if k not in extra}
    m = edgeqwen.load(_write_spec(tmp_path, _with(small_spec, keys=ok), "ok.gguf"), threads=1)
    assert m.config.rope_scaling["factor"] == 4.0


def test_absurd_block_count_is_refused_at_once(small_spec, tmp_path):
    s = _with(small_spec, keys={C.KEY_BLOCK_COUNT: 4096})
    t0 = _time.perf_counter()
    msg = load_error(_write_spec(tmp_path, s), api=True)
    assert "block_count = 4096, but the file has tensors of only 2 layers" in msg
    assert _time.perf_counter() - t0 < 5


def _tensor_changed(spec, name, dims=None, ttype=None, offset=None):
    import copy
    s = copy.deepcopy(spec)
    i = s.tensor(name)
    n, d, t, o = s.tensors[i]
    s.tensors[i] = (n, d if dims is None else dims, t if ttype is None else ttype, o if offset is None else offset)
    return s


def test_tensor_infos_are_checked(small_spec, tmp_path):
    emb = small_spec.tensors[small_spec.tensor(C.TOKEN_EMBD)]
    q = small_spec.tensors[small_spec.tensor("blk.0.attn_q.weight")]
    cases = [
        (_tensor_changed(small_spec, C.TOKEN_EMBD, dims=[64, 0]), "tensor 'token_embd.weight' has an empty dimension"),
        (_tensor_changed(small_spec, "blk.0.attn_q.weight", offset=q[3] + 1),
         "tensor 'blk.0.attn_q.weight' data offset"),
        (_tensor_changed(small_spec, "blk.0.attn_q.weight", offset=emb[3]), "overlap in the file"),
        (_tensor_changed(small_spec, "blk.0.attn_q.weight", dims=[]), "has 0 dimensions (expected 1 to 4)"),
        (_tensor_changed(small_spec, "blk.0.attn_q.weight", ttype=99), "has unknown type id 99"),
    ]
    for spec, expected in cases:
        assert expected in load_error(_write_spec(tmp_path, spec)), expected
    import copy
    s = copy.deepcopy(small_spec)
    s.tensors.append(s.tensors[s.tensor("blk.0.attn_q.weight")])
    assert "tensor 'blk.0.attn_q.weight' appears twice" in load_error(_write_spec(tmp_path, s))
    s = copy.deepcopy(small_spec)
    s.kv.append(s.kv[3])
    assert f"metadata key {s.kv[3][0]!r} appears twice" in load_error(_write_spec(tmp_path, s))


def test_deeply_nested_arrays_are_refused(small_spec, tmp_path):
    import copy
    import struct

    from fuzz_gguf import Raw
    s = copy.deepcopy(small_spec)
    s.kv.append(("x.nested", gguf.GGUFValueType.ARRAY,
                 Raw(struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 0, 0)), None))
    assert "'x.nested' has arrays nested more than 4 deep" in load_error(_write_spec(tmp_path, s))


def test_file_strings_in_errors_are_quoted_and_cut(small_spec, tmp_path):
    import copy
    s = copy.deepcopy(small_spec)
    s.tensors.append(("\x1b[2J\n" + "t" * 10_000, [32], int(QT.F32), 0))
    msg = load_error(_write_spec(tmp_path, s))
    assert "\x1b" not in msg and "\\x1b[2J\\n" in msg and len(msg) < 600 and "(10005 characters)" in msg
    s = _with(small_spec, keys={C.KEY_ARCH: "\x07" * 5000})
    msg = load_error(_write_spec(tmp_path, s))
    assert "\x07" not in msg and len(msg) < 600


def test_vocabulary_sizes_must_agree(small_spec, tmp_path):
    tokens = small_spec.get(C.KEY_TOK_LIST)[2]
    import copy
    s = copy.deepcopy(small_spec)
    s.set(C.KEY_TOK_LIST, gguf.GGUFValueType.ARRAY, tokens + ["extra"], gguf.GGUFValueType.STRING)
    assert "the tokenizer has 289 tokens (tokenizer.ggml.tokens) but token_embd.weight has 288 rows" in \
        load_error(_write_spec(tmp_path, s), api=True)
    emb = s.tensors[s.tensor(C.TOKEN_EMBD)]
    s = _tensor_changed(small_spec, C.TOKEN_EMBD, dims=[emb[1][0], 100])
    s.tensors = [t for t in s.tensors if t[0] != C.OUTPUT]
    assert "but token_embd.weight has 100 rows" in load_error(_write_spec(tmp_path, s), api=True)


@pytest.mark.parametrize("name", [C.OUTPUT_NORM, "blk.1.attn_k_norm.weight", "blk.0.ffn_norm.weight"])
def test_non_finite_norm_weights_are_refused(small_spec, tmp_path, name):
    import copy
    import struct
    s = copy.deepcopy(small_spec)
    off = s.tensors[s.tensor(name)][3]
    data = bytearray(s.data)
    struct.pack_into("<f", data, off + 12, float("nan"))
    s.data = bytes(data)
    assert f"tensor {name} has 1 non-finite values (nan at index 3)" in load_error(_write_spec(tmp_path, s))


@pytest.mark.parametrize("name, row", [(C.TOKEN_EMBD, None), ("blk.0.attn_v.weight", 1), ("blk.1.attn_q.weight", 0),
                                       ("blk.0.ffn_up.weight", 7), (C.OUTPUT, 5), ("blk.1.ffn_down.weight", 3)])
def test_non_finite_matrix_weights_stop_generation(small_spec, tmp_path, name, row):
    """Policy for the big matrices (not scanned at load): NaN/inf anywhere makes the hidden state
    non-finite, which is checked where the forward's quantization would otherwise launder it
    into arbitrary integers (the inputs of attn_output, ffn_down and the LM head); a NaN logit
    is caught by the sampler. Either way a clean error, never generated text."""
    import copy
    s = copy.deepcopy(small_spec)
    i = s.tensor(name)
    _, dims, ttype, off = s.tensors[i]
    data = bytearray(s.data)
    if ttype == int(QT.F16):
        data[off + 2 * (row * dims[0]):off + 2 * (row * dims[0]) + 2] = np.array([np.nan], "<f2").tobytes()
    else:
        bsz = gguf.GGML_QUANT_SIZES[QT(ttype)][1]
        r = 79 if row is None else row          # token_embd: the row of 'O', the prompt's first token
        at = off + r * (dims[0] // 32 * bsz)
        data[at:at + 2] = np.array([np.nan], "<f2").tobytes()
    s.data = bytes(data)
    m = edgeqwen.load(_write_spec(tmp_path, s), threads=1)
    with pytest.raises(EdgeQwenError) as e:
        m.generate("Once upon a time", max_tokens=2, temperature=0)
    assert re.search("non-finite|logits must be finite", str(e.value)) and "\n" not in str(e.value)


def test_embedding_rows_are_bounds_checked(small_spec, tmp_path):
    mf = ModelFile(_write_spec(tmp_path, small_spec))
    out = np.empty(64, np.float32)
    for bad in (-1, 288, 10**6):
        with pytest.raises(EdgeQwenError, match=rf"token id {bad} is outside the vocabulary \(0\.\.287\)"):
            mf.token_embd.row(bad, out)
    assert _math.isfinite(float(mf.token_embd.row(287, out)[0]))
