"""Artifacts addressed by URI: adapters, warmup checkpoints (with their Adam states), reports
and raw-file copies.

They live under the state home by default, or in an object store (``s3://bucket/prefix``)
reached with the options the resources read from the environment (as for Lance); this module
reads no environment.
Tables record the URI. A step writes an artifact into a local staging folder that is uploaded
whole, with a completion marker written last, and reads a remote one through a local cache
keyed by its URI (artifact keys are content hashes, so a cached copy never goes stale). Nothing
a step writes or reads relies on another step's disk.

Object stores are reached through ``pyarrow.fs`` (pyarrow is already a dependency; s3fs's
aiobotocore pins a botocore that conflicts with boto3's)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: written last into an uploaded folder: a reader trusts a remote folder only when it is there
COMPLETE = ".dsel-complete"


def default_cache() -> Path:
    """A per-user folder under the system's temporary directory, where remote artifacts are
    read from when no cache folder is configured."""
    return Path(tempfile.gettempdir()) / f"dsel-artifacts-{os.getuid()}"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _filesystem(uri: str, options: Mapping[str, str]):
    """(pyarrow filesystem, path inside it) for a remote ``uri``."""
    import pyarrow.fs as pafs

    if not uri.startswith("s3://"):
        return pafs.FileSystem.from_uri(uri)
    endpoint = options.get("aws_endpoint")
    scheme = "https"
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    fs = pafs.S3FileSystem(
        access_key=options.get("aws_access_key_id"),
        secret_key=options.get("aws_secret_access_key"),
        session_token=options.get("aws_session_token"),
        region=options.get("aws_region"),
        endpoint_override=endpoint,
        scheme=scheme,
    )
    return fs, uri.removeprefix("s3://").rstrip("/")


def check_part(part: str) -> str:
    """``part`` when it names one entry: not empty, ``.`` or ``..``, no separator or control
    character (an artifact never lands outside its root)."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or not part.isprintable():
        raise ValueError(f"artifact name: {part!r} must be one plain file or folder name")
    return part


def exists(uri: str, options: Mapping[str, str]) -> bool:
    """Whether a complete artifact (file, or folder with its marker) is stored at ``uri``."""
    if not is_remote(uri):
        return _local_path(uri).exists()
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return True
    return fs.get_file_info(f"{path}/{COMPLETE}").type == pafs.FileType.File


def local_copy(uri: str, options: Mapping[str, str], cache: Path | None = None) -> Path:
    """A local path holding the artifact at ``uri``: the path itself for a local artifact, else
    a copy downloaded once into the cache (atomically: a concurrent reader sees all or none)."""
    if not is_remote(uri):
        return _local_path(uri)
    import pyarrow.fs as pafs

    if not exists(uri, options):
        raise FileNotFoundError(f"artifact: nothing complete stored at {uri}")
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    where = f"{options.get('aws_endpoint', '')}|{uri}"  # the same URI on another server differs
    target = (cache or default_cache()) / hashlib.sha256(where.encode()).hexdigest()[:24]
    if (target / name).exists():
        return target / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fs, path = _filesystem(uri, options)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            (staging / name).mkdir()
        pafs.copy_files(path, str(staging / name), source_filesystem=fs, destination_filesystem=_local_fs())
        with contextlib.suppress(OSError):  # another reader finished first: its copy has the same bytes
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / name


def _local_fs():
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


@contextmanager
def writing(uri: str, options: Mapping[str, str]) -> Iterator[Path]:
    """A local folder to write the artifact at ``uri`` into. Locally that is its final place;
    for an object store a staging folder, uploaded whole when the block ends without an error,
    its completion marker last."""
    if not is_remote(uri):
        path = _local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import pyarrow.fs as pafs

    staging = Path(tempfile.mkdtemp(prefix="dsel-artifact-"))
    try:
        yield staging
        fs, path = _filesystem(uri, options)
        pafs.copy_files(str(staging), path, source_filesystem=_local_fs(), destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{COMPLETE}") as marker:
            marker.write(b"")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def put_file(local: Path, uri: str, options: Mapping[str, str]) -> str:
    """Store the file ``local`` at ``uri`` whole (a local rename, or one object): a reader sees
    all of it or nothing. Returns ``uri``."""
    if not is_remote(uri):
        target = _local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            local.open("rb") as src,
            tempfile.NamedTemporaryFile(dir=target.parent, prefix=".incoming-", delete=False) as tmp,
        ):
            shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, target)
        return uri
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri, options)
    pafs.copy_files(str(local), path, source_filesystem=_local_fs(), destination_filesystem=fs)
    return uri


def join(root: str | Path, *parts: str) -> str:
    """``root`` (a folder or an object-store URI) joined with checked plain ``parts``."""
    for part in parts:
        check_part(part)
    root = str(root)
    return "/".join([root.rstrip("/"), *parts]) if is_remote(root) else str(_local_path(root).joinpath(*parts))


@dataclass(frozen=True)
class ObjectStore:
    """Reading and writing artifacts by URI: ``options`` reach an object store (Lance's option
    names: endpoint, region, credentials; never printed), ``cache`` holds local copies of remote
    artifacts (default: :func:`default_cache`). Built by the resources from the environment."""

    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    cache: Path | None = None

    def exists(self, uri: str) -> bool:
        return exists(uri, self.options)

    def local_copy(self, uri: str) -> Path:
        return local_copy(uri, self.options, self.cache)

    def writing(self, uri: str) -> AbstractContextManager[Path]:
        return writing(uri, self.options)

    def put_file(self, local: Path, uri: str) -> str:
        return put_file(local, uri, self.options)


@dataclass(frozen=True)
class ArtifactStore:
    """Artifacts under ``root`` (the state home, or an object-store URI), reached through ``objects``."""

    root: str
    objects: ObjectStore = field(default_factory=ObjectStore)

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def uri(self, key: str) -> str:
        """The URI of artifact ``key`` (a relative path such as ``models/finetuned/<hash>``)."""
        return join(self.root, *key.split("/"))

    def find(self, key: str) -> Path | None:
        """A local path holding the complete artifact ``key``, or None when none is stored."""
        uri = self.uri(key)
        return self.objects.local_copy(uri) if self.objects.exists(uri) else None
