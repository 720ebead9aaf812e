"""Where a store lives: one fsspec file system and path, for local directories and URLs alike.

A location is a local path (absolute, ``~`` expanded; ``file://`` URLs become local paths) or an fsspec
URL such as ``s3://bucket/model.zarr`` or ``memory://model.zarr``. Every operation goes through the
location's fsspec file system. The one local special case is :meth:`StoreLocation.replace_with`: on a
local disk a store is replaced by two renames (atomic each), elsewhere by delete-then-move.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLocation:
    """Where a store lives: a local directory or an fsspec URL.

    Attributes
    ----------
    url : str
        Absolute local path, or a URL with a protocol other than ``file`` (what Zarr opens).
    """

    url: str

    @functools.cached_property
    def _fs_path(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)

    @property
    def fs(self) -> Any:
        """The fsspec file system of this location."""
        return self._fs_path[0]

    @property
    def path(self) -> str:
        """The path of this location within :attr:`fs`."""
        return self._fs_path[1]

    @property
    def is_local(self) -> bool:
        """True for a local directory."""
        return "://" not in self.url

    def beside(self, suffix: str) -> StoreLocation:
        """The sibling location ``<url><suffix>`` (no file system is touched)."""
        return StoreLocation(self.url + suffix)

    def exists(self) -> bool:
        """True when anything (a store or not) is at this location."""
        return bool(self.fs.exists(self.path))

    def has_group(self) -> bool:
        """True when a Zarr v3 group or array (``zarr.json``) is at this location."""
        return bool(self.fs.isfile(self.path.rstrip("/") + "/zarr.json"))

    def remove(self) -> None:
        """Delete whatever is at this location (no error if nothing is)."""
        if self.exists():
            self.fs.rm(self.path, recursive=True)

    def replace_with(self, source: StoreLocation) -> None:
        """Move the store at ``source`` to this location, replacing what is here.

        Local paths: two renames, each atomic: what is here is renamed away (to a unique sibling), then
        ``source`` is renamed here, then the old one is deleted; at every moment this location holds
        the old store, nothing (between the renames), or the new one. Other file systems: delete, then
        move (not atomic: a crash between the two leaves the store at ``source`` only).

        Parameters
        ----------
        source : StoreLocation
            On the same file system as this location.
        """
        if self.is_local and source.is_local:
            old = self.beside(f".old-{uuid.uuid4().hex}")
            if self.exists():
                os.rename(self.url, old.url)
            os.rename(source.url, self.url)
            old.remove()
        else:
            self.remove()
            self.fs.mv(source.path, self.path, recursive=True)
        logger.info("moved the store %s to %s", source.url, self.url)


def store_location(path: str | os.PathLike[str]) -> StoreLocation:
    """Normalise a local path or URL (``file://`` URLs become local paths).

    Parameters
    ----------
    path : str or os.PathLike
        A local path, a ``file://`` URL or an fsspec URL.

    Returns
    -------
    StoreLocation

    Examples
    --------
    >>> store_location("file:///tmp/model.zarr").url
    '/tmp/model.zarr'
    >>> store_location("memory://model.zarr/").url
    'memory://model.zarr'
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return StoreLocation(text.rstrip("/"))
    return StoreLocation(os.path.abspath(os.path.expanduser(text)))
