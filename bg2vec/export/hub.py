"""Uploading an exported folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from bg2vec.errors import Bg2VecError


def push(folder: Path, repo_id: str, *, private: bool) -> str:
    """Create ``repo_id`` (a model repo; kept if it exists) and upload ``folder`` as one commit; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                          commit_message="Upload a bg2vec encoder (jobs/export.py)")
    except HfHubHTTPError as e:
        raise Bg2VecError(f"push_to_hub={repo_id}: the Hub refused the upload ({e}); check HF_TOKEN or "
                          f"`hf auth login`, and that you may write to {repo_id.split('/')[0]}") from None
    return str(url)
