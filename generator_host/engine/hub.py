"""Downloads from the model hub: one place for what is fetched, how long we wait, what we say.

Why the host drives the download itself instead of passing a hub id to `from_pretrained`:
- a start from a complete cache must not touch the network: a small record written after a
  complete download (`<cache_dir>/hub/*.json`) says which files and commit make the model,
  and the pipeline then loads from that local folder, so neither diffusers nor transformers
  makes a hub call of its own (no update probe, no safetensors auto-conversion request);
- every call gets explicit connect/read timeouts (huggingface_hub's own default client has
  none, and some of its calls pass `timeout=None`);
- the fp16 variant is chosen from the repository's file list, never from a failed download;
- one progress display per file (bytes, speed, time left), on a terminal or in a log;
- every failure becomes a `HubError` naming the cause and the next step.

huggingface_hub still does the HTTP work (HEAD for ETag and commit, GET with resume by
Range within a run, atomic moves into its cache); files finished before an interruption
stay in its cache and are not fetched again on the next start.

Others' downloads (a tiny VAE, CLIP for categories) call `fetch(repo, ...)` too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The standard weight file names the diffusers and transformers loaders read, with an
# optional variant (".fp16") and shard suffix. Anything else in a repository (single-file
# checkpoints such as sd_turbo.safetensors at the top, ONNX, Flax, TF) is not needed.
WEIGHT_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)"
    r"(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d{5}-of-\d{5})?\.(?P<ext>safetensors|bin)$"
)
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece
AGAIN = "run again to continue (files already downloaded are kept)"
ATTEMPTS = 3  # per file, for server errors and dropped connections


class HubError(Exception):
    """A download or a hub question failed; the text names the cause and the next step."""


@dataclass(frozen=True)
class HubOptions:
    """How the host talks to the hub; set once at start by `configure`."""

    timeout: float = 10.0  # seconds to connect and between bytes, for every hub call
    check_updates: bool = False  # ask the hub at start whether a cached model changed
    endpoint: str | None = None  # None: huggingface_hub's (HF_ENDPOINT)
    cache: str | None = None  # None: huggingface_hub's cache (HF_HOME / HF_HUB_CACHE)
    records: str | None = None  # None: <the app's cache folder>/hub


@dataclass(frozen=True)
class Selection:
    """The files a model needs and the weight variant they are ("fp16" or None)."""

    files: tuple[str, ...]
    variant: str | None


@dataclass(frozen=True)
class Fetched:
    """A model that is complete on disk: load it from `folder` with `variant`."""

    folder: Path
    variant: str | None
    commit: str


_options = HubOptions()
_hub_down = False  # an update check of this start found the hub unreachable


def configure(options: HubOptions) -> None:
    """Apply the options: timeouts on every huggingface_hub call, no auto-conversion.

    Safe to call more than once (each Engine load calls it with its settings).
    """
    global _options, _hub_down
    _options = options
    _hub_down = False
    # transformers would ask the hub (and an external service) to convert a .bin checkpoint
    # to safetensors in a background thread; the host makes only the calls it announces.
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    from huggingface_hub import constants, set_client_factory

    # Without this, huggingface_hub's first request of a day also asks the hub for its
    # "agent harnesses" list (telemetry for the user agent): a call nobody announced,
    # and up to 3 s more on a hub that hangs.
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    constants.HF_HUB_DISABLE_TELEMETRY = True
    constants.HF_HUB_ETAG_TIMEOUT = int(max(1, options.timeout))
    constants.HF_HUB_DOWNLOAD_TIMEOUT = int(max(1, options.timeout))
    set_client_factory(lambda: _bounded_client(options.timeout))


def _bounded_client(timeout: float) -> Any:
    """huggingface_hub's default client, with timeouts where a caller passed none."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    bound = httpx2.Timeout(timeout)

    class BoundedClient(httpx2.Client):
        def send(self, request: Any, **kwargs: Any) -> Any:
            # Some huggingface_hub calls pass timeout=None (wait forever): a captive portal
            # or a broken proxy that accepts and never answers would hang the start.
            limits = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {
                key: (value if value is not None else timeout)
                for key, value in {**bound.as_dict(), **limits}.items()
            }
            return super().send(request, **kwargs)

    return BoundedClient(
        event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=bound
    )


# ----- which files a model needs (pure) ------------------------------------------------
def select_files(paths: Sequence[str], fp16: bool = False) -> Selection:
    """The files to download from a repository's file list.

    A diffusers pipeline (model_index.json at the top) needs model_index.json and, in each
    component folder, its configs/tokenizer files and one set of standard weights; a single
    model (a transformers or diffusers model at the top, e.g. the safety checker or a tiny
    VAE) needs its top-level configs and weights. Weights: safetensors over .bin; the fp16
    variant only when `fp16` and the file list really has fp16 weights.
    """
    paths = [p for p in paths if p]
    pipeline = "model_index.json" in paths
    by_folder: dict[str, list[str]] = {}
    for p in paths:
        folder, _, name = p.rpartition("/")
        if "/" in folder:
            continue  # deeper folders: never part of a standard layout
        by_folder.setdefault(folder, []).append(name)
    weights_of = {f: [n for n in names if WEIGHT_RE.match(n)] for f, names in by_folder.items()}
    has_fp16 = any(
        WEIGHT_RE.match(n).group("variant") == "fp16"  # type: ignore[union-attr]
        for f, names in weights_of.items()
        if (f != "") == pipeline
        for n in names
    )
    variant = "fp16" if fp16 and has_fp16 else None
    chosen: list[str] = []
    for folder, names in sorted(by_folder.items()):
        prefix = f"{folder}/" if folder else ""
        if pipeline and not folder:
            chosen.append("model_index.json")
            continue
        if not pipeline and folder:
            continue
        configs = [n for n in names if n.endswith(CONFIG_SUFFIXES)]
        weights = _pick_weights(weights_of[folder], variant)
        chosen += [prefix + n for n in sorted(configs) + weights]
    return Selection(files=tuple(chosen), variant=variant)


def _pick_weights(names: list[str], variant: str | None) -> list[str]:
    """One weight set: the variant's files when this folder has them, else the plain ones."""

    def of(v: str | None, ext: str) -> list[str]:
        return sorted(
            n
            for n in names
            if (m := WEIGHT_RE.match(n)) and m.group("variant") == v and m.group("ext") == ext
        )

    for v in ([variant] if variant else []) + [None]:
        for ext in ("safetensors", "bin"):
            if found := of(v, ext):
                return found
    return []


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


# ----- what is in the cache --------------------------------------------------------------
def _cache() -> str:
    from huggingface_hub import constants

    return _options.cache or constants.HF_HUB_CACHE


def _endpoint() -> str:
    from huggingface_hub import constants

    return (_options.endpoint or constants.ENDPOINT).rstrip("/")


def _record_path(repo: str, fp16: bool) -> Path:
    if _options.records:
        folder = Path(_options.records)
    else:
        from generator_host.core.settings import cache_dir

        folder = cache_dir() / "hub"
    return folder / f"{repo.replace('/', '--')}{'.fp16' if fp16 else ''}.json"


def _snapshot(repo: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(_cache()) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit


def _is_cached(repo: str, name: str, commit: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, name, cache_dir=_cache(), revision=commit), str)


def cached(repo: str, fp16: bool = False) -> Fetched | None:
    """The complete download of `repo` in the cache, or None; no network."""
    try:
        record = json.loads(_record_path(repo, fp16).read_text(encoding="utf-8"))
        commit, files, variant = record["commit"], record["files"], record["variant"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(_is_cached(repo, name, commit) for name in files):
        return None
    return Fetched(folder=_snapshot(repo, commit), variant=variant, commit=commit)


def _unrecorded_copy(repo: str, fp16: bool) -> Fetched | None:
    """A snapshot of `repo` in the cache without a record of being complete, or None."""
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(_cache()) / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / "main"
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = _snapshot(repo, commit)
    if not (folder.is_dir() and any(folder.iterdir())):
        return None
    variant = "fp16" if fp16 and any(folder.rglob("*.fp16.*")) else None
    return Fetched(folder=folder, variant=variant, commit=commit)


def _write_record(repo: str, fp16: bool, commit: str, selection: Selection) -> None:
    path = _record_path(repo, fp16)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {"commit": commit, "files": list(selection.files), "variant": selection.variant}
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # the next start asks the hub again; nothing else is lost
        log.warning("cannot record the finished download of %s in %s: %s", repo, path, exc)


# ----- fetching ------------------------------------------------------------------------
def fetch(repo: str, *, fp16: bool = False, label: str = "model") -> Fetched:
    """Make `repo` complete in the cache and return where it is; raises HubError.

    From a complete cache: no network at all, unless [model] check_updates is on (then one
    question to the hub, bounded by the timeout; any failure falls back to the cache).
    `label` names the download in messages ("model", "safety checker", "tiny VAE").
    """
    from huggingface_hub import constants

    global _hub_down
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise HubError(
            f"{label} {repo!r} is neither a folder here nor a hub id (like stabilityai/sd-turbo)"
        ) from exc
    have = cached(repo, fp16)
    if have is not None and (not _options.check_updates or _hub_down):
        log.info("%s %s: complete in the cache (%s); no hub calls", label, repo, have.folder)
        return have
    if constants.is_offline_mode():
        older = have or _unrecorded_copy(repo, fp16)
        if older is not None:
            return older
        raise HubError(
            f"{label} {repo} is not downloaded yet and HF_HUB_OFFLINE is set: unset "
            "HF_HUB_OFFLINE so it can download"
            + (", or set [model] model to a downloaded folder" if label == "model" else "")
        )
    try:
        info = _model_info(repo)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes a HubError
        error = explain(exc, repo, label, "asking the hub for its file list")
        if have is not None:
            log.warning("cannot check %s for updates (%s); starting from the cache", repo, error)
            _hub_down = _transient(exc)  # the next model of this start does not wait again
            return have
        older = _unrecorded_copy(repo, fp16)
        if older is not None and _transient(exc):
            # Downloaded before the host kept records (or by another program): worth a try.
            log.warning(
                "%s; trying the copy of %s already in the cache (%s), not known to be complete",
                error,
                repo,
                older.folder,
            )
            return older
        raise error from exc
    if have is not None and info.sha == have.commit:
        log.info("%s %s: up to date and complete in the cache", label, repo)
        return have
    try:
        return _download(repo, info, fp16, label, update=have is not None)
    except HubError as error:
        if have is None:
            raise
        log.warning("the update of %s failed (%s); starting from the cached version", repo, error)
        return have


def _model_info(repo: str) -> Any:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_endpoint())
    return api.model_info(repo, files_metadata=True, timeout=_options.timeout)


def _download(repo: str, info: Any, fp16: bool, label: str, *, update: bool) -> Fetched:
    commit = info.sha
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    selection = select_files(list(sizes), fp16)
    if not selection.files:
        raise HubError(
            f"{repo} has no model files the host can load (no model_index.json, config.json "
            "or standard weights): check [model] model"
        )
    if fp16 and selection.variant is None:
        log.info("%s has no fp16 files; downloading the full-precision ones", repo)
    todo = [f for f in selection.files if not _is_cached(repo, f, commit)]
    total = sum(sizes.get(f, 0) for f in todo)
    have = len(selection.files) - len(todo)
    cache = _cache()
    if todo:
        already = f"; {have} of {len(selection.files)} files already in the cache" if have else ""
        log.info(
            "%s %s %s: %d files, %s, into %s%s (progress below)",
            "updating" if update else "downloading",
            label,
            repo,
            len(todo),
            human_size(total),
            cache,
            already,
        )
        _check_space(total, cache, repo, label)
    started = time.monotonic()
    for i, name in enumerate(todo, 1):
        _download_file(repo, name, commit, f"{repo} [{i}/{len(todo)}] {name}", label)
    if todo:
        seconds = max(1e-3, time.monotonic() - started)
        log.info(
            "%s %s downloaded: %s in %.0f s (%s/s)",
            label,
            repo,
            human_size(total),
            seconds,
            human_size(total / seconds),
        )
    _write_record(repo, fp16, commit, selection)
    return Fetched(folder=_snapshot(repo, commit), variant=selection.variant, commit=commit)


def _check_space(needed: int, cache: str, repo: str, label: str) -> None:
    folder = Path(cache)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise HubError(
            f"not enough disk space for {label} {repo}: {human_size(needed)} needed, "
            f"{human_size(free)} free in {cache}; free some space or set HF_HOME to a "
            f"bigger disk, then {AGAIN}"
        )


def _download_file(repo: str, name: str, commit: str, title: str, label: str) -> None:
    """One file into the cache, with a progress display; retries server errors and drops."""
    from huggingface_hub import hf_hub_download

    progress = type("FileProgress", (DownloadProgress,), {"title": title})
    for attempt in range(1, ATTEMPTS + 1):
        try:
            hf_hub_download(
                repo,
                name,
                revision=commit,
                cache_dir=_cache(),
                endpoint=_endpoint(),
                etag_timeout=_options.timeout,
                tqdm_class=progress,
            )
            return
        except Exception as exc:  # noqa: BLE001 - sorted below
            error = explain(exc, repo, label, f"downloading {name}")
            # Network errors were already retried inside huggingface_hub (HEAD with backoff,
            # GET resumed by Range); a GET answered 5xx was not: that is retried here.
            if attempt == ATTEMPTS or not _server_error(exc):
                raise error from exc
            wait = 2 ** (attempt - 1)
            log.warning(
                "%s; trying again in %d s (attempt %d of %d)", error, wait, attempt + 1, ATTEMPTS
            )
            time.sleep(wait)


def _server_error(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(exc, "response", None) if isinstance(exc, HfHubHTTPError) else None
    return response is not None and response.status_code >= 500


def _transient(exc: BaseException) -> bool:
    """A server error or a lost connection: worth another try; a 404 or a full disk is not."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    exc = _root(exc)
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        return response is not None and response.status_code >= 500
    if isinstance(exc, (httpx2.TransportError, httpx2.TimeoutException)):
        return True
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def explain(exc: BaseException, repo: str, label: str, doing: str) -> HubError:
    """A HubError naming the cause (not found, unreachable, server error, disk full,
    interrupted) and what to do next."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HubError):
        return exc
    exc = _root(exc)
    hub = _endpoint()
    t = f"{_options.timeout:g} s"
    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{label} {repo} needs an account: accept its licence on {hub}/{repo}, log in "
            f"with 'hf auth login', then {AGAIN}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"{label} {repo!r} does not exist on the hub ({hub}) or is private: check the "
            "name (for example stabilityai/sd-turbo)"
        )
    if isinstance(exc, (RevisionNotFoundError, RemoteEntryNotFoundError)):
        return HubError(f"the hub has no longer what {repo} listed ({doing}): {AGAIN}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else 0
        if status >= 500:
            return HubError(
                f"the hub ({hub}) answered with a server error (HTTP {status}) while {doing} "
                f"for {label} {repo}; it is the hub's side: wait a little, then {AGAIN}"
            )
        return HubError(
            f"the hub ({hub}) refused {doing} for {label} {repo} (HTTP {status}); {AGAIN}"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{label} {repo} must be downloaded but HF_HUB_OFFLINE is set")
    if isinstance(exc, httpx2.ConnectTimeout):
        return HubError(
            f"the hub ({hub}) cannot be reached: no connection within {t} while {doing} for "
            f"{label} {repo} (network down or blocked?); check the connection, then {AGAIN}"
        )
    if isinstance(exc, httpx2.TimeoutException):
        return HubError(
            f"the hub ({hub}) stopped answering ({t} without data) while {doing} for {label} "
            f"{repo}; check the connection (a proxy or a login page?), then {AGAIN}"
        )
    if isinstance(exc, httpx2.ConnectError):
        return HubError(
            f"the hub ({hub}) cannot be reached ({_first_line(exc)}) while {doing} for "
            f"{label} {repo}; check the internet connection, then {AGAIN}"
        )
    if isinstance(exc, httpx2.TransportError) or (
        isinstance(exc, OSError) and "Consistency check failed" in str(exc)
    ):
        return HubError(
            f"the download of {label} {repo} was interrupted ({doing}: connection lost); {AGAIN}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return HubError(
            f"the disk is full ({_cache()}) while {doing} for {label} {repo}: free some space "
            f"or set HF_HOME to a bigger disk, then {AGAIN}"
        )
    return HubError(f"{doing} for {label} {repo} failed: {type(exc).__name__}: {_first_line(exc)}")


def _root(exc: BaseException) -> BaseException:
    """The network error under huggingface_hub's "cannot find it in the cache" error."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----- progress ------------------------------------------------------------------------
def _tqdm_base() -> type:
    from tqdm import tqdm

    return tqdm


class DownloadProgress(_tqdm_base()):  # type: ignore[misc]
    """One display per file: name, bytes done of total, speed, time left.

    On a terminal a live bar; elsewhere (a log file, a pipe, a launcher) one line every
    few seconds, so a download is never silent. Shown even when the libraries' own bars
    are turned off (diffusers' and transformers' "loading" bars say nothing to a streamer).
    """

    title = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        self._out = kwargs.get("file") or sys.stderr
        self._tty = _terminal_columns(self._out) > 0
        kwargs.update(
            disable=False,
            desc=self.title or kwargs.get("desc"),
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            mininterval=0.5 if self._tty else 5.0,
        )
        if not self._tty:
            # tqdm's own writes (carriage returns, the final newline) go nowhere; `display`
            # writes whole lines instead.
            kwargs["file"] = _Discard()
            kwargs["bar_format"] = (
                "{desc}: {n_fmt}B of {total_fmt}B ({percentage:.0f}%), {rate_fmt}, {remaining} left"
            )
        else:
            kwargs["file"] = self._out
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._tty:
            return super().display(msg, pos)
        if self.n > 0:  # no "0 B of ..." line before the first bytes
            self._out.write(self.format_meter(**self.format_dict) + "\n")
            self._out.flush()
        return True


def _terminal_columns(stream: Any) -> int:
    """Width of the terminal `stream` writes to; 0 when it is not one (or has no width:
    a live bar would then print nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass
