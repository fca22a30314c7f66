"""Models by name from the Hugging Face Hub: `edgeqwen pull REPO[:QUANT]`, `list`, `rm`, and `-m REPO:QUANT`.

Everything goes through `huggingface_hub` and its cache (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT
work as for every Hub tool; downloads resume from the `.incomplete` file a killed transfer left). A
reference is llama.cpp's `-hf` form: `Qwen/Qwen3-4B-GGUF:Q4_K_M` picks the repository's GGUF file whose
name carries that quant (case-insensitive); without `:QUANT` a repository with one GGUF model is taken
as is, one with several is an error listing them. A sharded model (`name-00001-of-00003.gguf`) is one
choice: all its shards are fetched. Every downloaded file is checked against the size and sha256 the
Hub lists for it before it is used; a file that does not match is deleted and refused.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeQwenError, one_line, quote

_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?::(?P<quant>[\w.-]+))?$")
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", re.I)
_QUANT = re.compile(r"(?:^|[-_.])((?:I?Q\d[\w]*?|F16|BF16|F32))(?:-\d{5}-of-\d{5})?\.gguf$", re.I)


def parse_ref(text: str) -> tuple[str, str | None] | None:
    """(repo, quant) of `owner/name[:QUANT]`, or None when `text` is not of that form."""
    m = _REF.match(text)
    if not m or text.lower().endswith(".gguf"):
        return None
    return m["repo"], m["quant"]


def is_ref(text: str) -> bool:
    """`-m` value that names a Hub model rather than a file: of the form owner/name[:QUANT] and not a path
    that exists."""
    return not os.path.exists(text) and parse_ref(text) is not None


def quant_of(filename: str) -> str:
    """The quant a GGUF file name carries ('qwen3-4b-q4_k_m.gguf' -> 'Q4_K_M'), else '?'."""
    m = _QUANT.search(os.path.basename(filename))
    return m[1].upper() if m else "?"


@dataclass
class Choice:
    """One model of a repository: its GGUF file, or its shards in order."""
    quant: str
    files: list[str]
    size: int | None = None


def choices(filenames) -> list[Choice]:
    """The GGUF models among a repository's files (shards of one model grouped), sorted by name."""
    groups: dict[str, list[str]] = {}
    for f in sorted(filenames):
        if not f.lower().endswith(".gguf") or "mmproj" in os.path.basename(f).lower():
            continue
        m = _SHARD.match(f)
        groups.setdefault(m["stem"] if m else f, []).append(f)
    return [Choice(quant_of(files[0]), files) for files in groups.values()]


def pick(repo: str, quant: str | None, found: list[Choice]) -> Choice:
    """The model `quant` names among `found` (all of one repository); a clear error listing them otherwise."""
    listing = ", ".join(f"{c.quant} ({os.path.basename(c.files[0])})" for c in found)
    if not found:
        raise EdgeQwenError(f"{repo} has no GGUF file")
    if quant is None:
        if len(found) == 1:
            return found[0]
        raise EdgeQwenError(f"{repo} has {len(found)} GGUF models; choose one with {repo}:QUANT: {listing}")
    hits = [c for c in found if c.quant == quant.upper()] or \
           [c for c in found if quant.lower() in os.path.basename(c.files[0]).lower()]
    if len(hits) == 1:
        return hits[0]
    what = f"several GGUF models match {quote(quant, 40)}" if hits else f"no GGUF model {quote(quant, 40)}"
    raise EdgeQwenError(f"{repo}: {what}; available: {listing}")


def _hub_error(e: Exception, repo: str) -> EdgeQwenError:
    """One line for what huggingface_hub raises."""
    from huggingface_hub import errors as E

    if isinstance(e, E.GatedRepoError):
        return EdgeQwenError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, E.RepositoryNotFoundError):
        return EdgeQwenError(f"{repo}: no such repository on the Hub (or private: set HF_TOKEN)")
    if isinstance(e, E.OfflineModeIsEnabled):
        return EdgeQwenError(f"{repo} is not in the cache and HF_HUB_OFFLINE is set")
    if isinstance(e, E.HfHubHTTPError):
        return EdgeQwenError(f"{repo}: the Hub answered {one_line(str(e).splitlines()[0], 200)}")
    return EdgeQwenError(f"{repo}: cannot reach the Hub at {endpoint()} ({type(e).__name__}: "
                         f"{one_line(str(e), 200)}); models already pulled work offline (HF_HUB_OFFLINE=1)")


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, name: str, size: int | None, sha256: str | None) -> None:
    """Refuse (and delete from the cache) a file whose size or sha256 is not what the Hub lists."""
    real = Path(os.path.realpath(path))
    problem = None
    if size is not None and real.stat().st_size != size:
        problem = f"size {real.stat().st_size} bytes, the Hub lists {size}"
    elif sha256 is not None and sha256_of(real) != sha256:
        problem = f"sha256 differs from the Hub's {sha256}"
    if problem:
        for p in {real, Path(path)}:
            p.unlink(missing_ok=True)
        raise EdgeQwenError(f"{name}: the download is corrupt ({problem}); deleted, run the command again")


def pull(ref: str, log=None) -> Path:
    """Download the model `ref` names (if not already cached), verify it, return its (first) file."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import constants

    parsed = parse_ref(ref)
    if parsed is None:
        raise EdgeQwenError(f"{quote(ref, 100)} is not a model name of the form owner/repo[:QUANT]")
    repo, quant = parsed
    if constants.HF_HUB_OFFLINE:
        return cached(ref)
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as e:
        raise _hub_error(e, repo) from None
    meta = {s.rfilename: s for s in info.siblings or []}
    choice = pick(repo, quant, choices(meta))
    paths = []
    for f in choice.files:
        s = meta[f]
        size = s.lfs.size if s.lfs else s.size
        sha = s.lfs.sha256 if s.lfs else None
        if log:
            log(f"{repo}: {f} ({size / 2**20:.1f} MiB)" if size else f"{repo}: {f}")
        try:
            _fetch_blob(repo, f, info.sha, size, sha)
            p = Path(hf_hub_download(repo, f, revision=info.sha))    # links the blob into the snapshot
        except EdgeQwenError:
            raise
        except Exception as e:
            raise _hub_error(e, repo) from None
        _verify(p, f, size, sha)
        paths.append(p)
    return paths[0]


def _fetch_blob(repo: str, filename: str, revision: str, size: int | None, sha256: str | None) -> None:
    """Download a file's blob into huggingface_hub's cache, resuming a transfer an earlier (killed)
    process left in `<etag>.part`, and checking it before it enters the cache. (huggingface_hub 2.x
    resumes only inside one process: each download writes a new uniquely named temporary file.)"""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, filename, revision=revision)
    meta = get_hf_file_metadata(url)
    if not meta.etag:
        return                                        # hf_hub_download does it (and refuses it)
    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    blob = blobs / meta.etag
    if blob.exists():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    part = blobs / f"{meta.etag}.part"
    with open(part, "ab") as f:
        done = f.tell()
        if meta.size is None or done < meta.size:
            http_get(meta.location or url, f, resume_size=done, headers=build_hf_headers(),
                     expected_size=meta.size, displayed_filename=filename)
    _verify(part, filename, size, sha256)
    os.replace(part, blob)


def _cached_repo(repo: str):
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:                       # no cache directory yet
        return None
    return next((r for r in cache.repos if r.repo_type == "model" and r.repo_id.lower() == repo.lower()), None)


def cached(ref: str) -> Path:
    """The local file of a model already pulled (no network)."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise EdgeQwenError(f"{quote(ref, 100)} is not a model name of the form owner/repo[:QUANT]")
    repo, quant = parsed
    r = _cached_repo(repo)
    files = {} if r is None else {str(f.file_path.relative_to(rev.snapshot_path)): f.file_path
                                  for rev in sorted(r.revisions, key=lambda v: v.last_modified) for f in rev.files}
    found = choices(files)
    if not found:
        raise EdgeQwenError(f"{ref}: not pulled yet (and no such file): run `edgeqwen pull {ref}` (or add --pull)")
    try:
        choice = pick(repo, quant, found)
    except EdgeQwenError as e:
        raise EdgeQwenError(f"{e} (in the cache; `edgeqwen pull {ref}` fetches it)") from None
    return Path(files[choice.files[0]])


def resolve(model: str, allow_pull: bool = False, log=None) -> str:
    """A `-m` value -> a file path: a path as is, `repo:quant` from the cache (or pulled with allow_pull)."""
    if not is_ref(model):
        return model
    return str(pull(model, log) if allow_pull else cached(model))


@dataclass
class Entry:
    repo: str
    quant: str
    size: int
    path: Path


def list_models() -> list[Entry]:
    """GGUF models in the Hub cache (all revisions; shards summed into one entry)."""
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir()
    except Exception:
        return []
    out = []
    for r in sorted(cache.repos, key=lambda r: r.repo_id.lower()):
        if r.repo_type != "model":
            continue
        for rev in r.revisions:
            files = {str(f.file_path.relative_to(rev.snapshot_path)): f for f in rev.files}
            for c in choices(files):
                out.append(Entry(r.repo_id, c.quant, sum(files[f].size_on_disk for f in c.files),
                                 files[c.files[0]].file_path))
    return out


def remove(ref: str) -> list[Path]:
    """Delete a pulled model (`repo:quant`: its files; `repo`: the whole repository) from the cache."""
    import shutil

    parsed = parse_ref(ref)
    if parsed is None:
        raise EdgeQwenError(f"{quote(ref, 100)} is not a model name of the form owner/repo[:QUANT]")
    repo, quant = parsed
    r = _cached_repo(repo)
    if r is None:
        raise EdgeQwenError(f"{repo} is not in the cache (`edgeqwen list` shows what is)")
    if quant is None:
        shutil.rmtree(r.repo_path)
        return [r.repo_path]
    removed = []
    for rev in r.revisions:
        files = {str(f.file_path.relative_to(rev.snapshot_path)): f for f in rev.files}
        found = choices(files)
        hits = [c for c in found if c.quant == quant.upper()]
        for c in hits:
            for name in c.files:
                f = files[name]
                f.blob_path.unlink(missing_ok=True)
                f.file_path.unlink(missing_ok=True)
                removed.append(f.file_path)
    if not removed:
        raise EdgeQwenError(f"{repo}:{quant} is not in the cache; there: "
                            f"{', '.join(e.quant for e in list_models() if e.repo == r.repo_id) or 'nothing'}")
    return removed
