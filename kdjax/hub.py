"""Turn a teacher hub id into the local folder of its snapshot, so hub ids and folders load through one code path.

Online, one metadata request lists the repository's files; only config.json, the tokenizer files and the one weight
file kdjax will read are downloaded (never `pytorch_model.bin` without `teacher.allow_pickle`). Offline
(`HF_HUB_OFFLINE=1`) or with the hub unreachable, the snapshot already in the hub cache is used. Every failure is one
`TeacherError` line that says what to do, raised after at most one short request instead of transformers' retries.
"""

from __future__ import annotations

import logging
import os
import re

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)

# Weight files kdjax reads, in the order it prefers them: no conversion, no pickle, pickle.
WEIGHT_FILES = (
    ("msgpack", "flax_model.msgpack"),
    ("safetensors", "model.safetensors"),
    ("pickle", "pytorch_model.bin"),
)
# Files that make up a tokenizer: BERT (WordPiece), RoBERTa (byte-level BPE), ALBERT (sentencepiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# A sentence-transformers repo's module list and pooling config: glue.pooling=auto reads them (kdjax.classifier).
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "*Pooling/config.json")
# Seconds to wait for the hub's answer before falling back to the cache or giving up.
_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_OFFLINE_REMEDY = (
    "give a local folder (--config.teacher.name=/path/to/model), or use the offline `:minilm` variant "
    "(--config=configs/bert_nas.py:minilm)"
)


class TeacherError(KdjaxError, ValueError):
    """The teacher cannot be loaded (unknown id, missing or damaged files, unsupported architecture)."""


def looks_like_hub_id(name: str) -> bool:
    """`org/name` or `name`, not a path (`/abs`, `./rel`, `~/x`, `a/b/c`)."""
    return not name.startswith((".", "~", os.sep)) and bool(_HUB_ID.match(name))


def pickle_refused(where: str) -> TeacherError:
    return TeacherError(
        f"teacher {where} only has pickle weights (pytorch_model.bin), which can run code when loaded; "
        "convert them to safetensors or set --config.teacher.allow_pickle=true"
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _cached_snapshot(repo_id: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or a malformed cache entry: treated alike
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def snapshot_folder(repo_id: str, allow_pickle: bool) -> str:
    """The local folder holding `repo_id`'s files (downloading what is missing when the hub is reachable)."""
    import requests
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        cached = _cached_snapshot(repo_id)
        if cached is None:
            raise TeacherError(
                f"teacher {repo_id!r} is not a local folder, and as a hub id it is not in the hub cache "
                f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1 keeps kdjax off the hub: download it once where "
                f"the hub is reachable "
                f"(huggingface-cli download {repo_id}), or {_OFFLINE_REMEDY}"
            )
        return cached
    try:
        info = HfApi().model_info(repo_id, timeout=_TIMEOUT_S)
    except (GatedRepoError, RevisionNotFoundError) as e:
        raise TeacherError(f"cannot load teacher {repo_id!r} from the hub: {_first_line(e)}") from e
    except RepositoryNotFoundError as e:
        raise TeacherError(
            f"teacher {repo_id!r} is neither a local folder nor a model on the hub ({_endpoint()}); "
            "check the spelling, or give the path of a local folder"
        ) from e
    except (requests.exceptions.RequestException, OSError) as e:
        cached = _cached_snapshot(repo_id)
        if cached is not None:
            log.warning("the hub (%s) is unreachable; using the cached snapshot of %s", _endpoint(), repo_id)
            return cached
        raise TeacherError(
            f"cannot reach the hub ({_endpoint()}) to fetch teacher {repo_id!r}, and it is not in the hub cache: "
            f"{_OFFLINE_REMEDY}, or download it once where the hub is reachable and set HF_HUB_OFFLINE=1"
        ) from e
    files = {s.rfilename for s in info.siblings or ()}
    weights = [name for fmt, name in WEIGHT_FILES if name in files and (fmt != "pickle" or allow_pickle)]
    if not weights:
        if "pytorch_model.bin" in files:
            raise pickle_refused(f"{repo_id!r} on the hub")
        raise TeacherError(
            f"teacher {repo_id!r} on the hub has no flax_model.msgpack, model.safetensors or pytorch_model.bin"
        )
    patterns = ["config.json", weights[0], *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES]
    try:
        return snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns, etag_timeout=_TIMEOUT_S)
    except (requests.exceptions.RequestException, OSError) as e:
        raise TeacherError(f"downloading teacher {repo_id!r} from the hub failed: {_first_line(e)}") from e
