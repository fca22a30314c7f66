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
            assert f"tensor {tensor} " in msg, (label, msg)
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
    assert "tensor huge" in str(e.value)


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
    assert msg == f"{p}: architecture {arch!r} is not supported (expected 'qwen3')"


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
