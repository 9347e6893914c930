"""Screenshots decoded and resized once, kept on disk for every later epoch and run (`data.image_cache`,
on by default in ~/.cache/pigg/images).

Decoding a large PNG and resizing it to the processor's pixel budget is most of a sample's preparation.
The cache stores the resized RGB pixels as an uncompressed .npy file per image and processor setting, so
a later read is a file copy. The processor still runs on the cached image: its resize then meets an image
already at the target size, which PIL returns unchanged, so pixel values are exactly those of the uncached
path (Qwen-VL's PIL image processor; a torchvision processor resizes with its own kernel instead).

Entries are keyed by the file's absolute path, size and modification time (or the bytes' digest) and the
processor's resize settings; a changed file or setting makes a new entry. Writes go to a temporary name
and are renamed into place, so dataloader workers filling the same cache never read half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pigg.data.sample import ImageRef, load_image, resolve_image_path


def cache_folder(setting: str | bool | None) -> Path | None:
    """The folder `data.image_cache` names: None/false turns the cache off; "auto"/true is $PIGG_CACHE/images,
    or ~/.cache/pigg/images (under $XDG_CACHE_HOME where set)."""
    if setting is None or setting is False:
        return None
    if setting is True or setting == "auto":
        root = os.environ.get("PIGG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "pigg"
        return Path(root).expanduser() / "images"
    return Path(setting).expanduser()


def image_cache_for(setting: str | bool | None, image_processor, family=None) -> ImageCache | None:
    """The ImageCache a `data.image_cache` setting names for this processor, or None when it is off, the
    model is text-only (no image processor) or splits images into tiles (Idefics3: the cache stores
    Qwen's one resize per image)."""
    if image_processor is None or (family is not None and family.image_sizing != "qwen"):
        return None
    folder = cache_folder(setting)
    return ImageCache(folder, image_processor) if folder is not None else None


class ImageCache:
    def __init__(self, folder: str | Path, image_processor):
        self.folder = Path(folder).expanduser()
        self.processor = image_processor
        size = dict(image_processor.size)
        self.factor = image_processor.patch_size * image_processor.merge_size
        self.min_pixels, self.max_pixels = size["shortest_edge"], size["longest_edge"]
        self.resample = Image.Resampling(int(image_processor.resample))
        self.settings = f"{self.factor}/{self.min_pixels}/{self.max_pixels}/{self.resample.name}"
        self.warned = False

    def _key(self, ref: ImageRef, base_dir: Path | None) -> str | None:
        if isinstance(ref, str):
            path = resolve_image_path(ref, base_dir).resolve()
            stat = path.stat()  # a missing file raises here and load_image reports it
            source = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        elif isinstance(ref, bytes | bytearray):
            source = hashlib.sha1(ref).hexdigest()
        else:  # a PIL image in memory: nothing stable to key it by
            return None
        return hashlib.sha1(f"{source}|{self.settings}".encode()).hexdigest()

    def resize(self, image: Image.Image) -> Image.Image:
        """`image` at the processor's target size, resized as its PIL backend resizes."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        height, width = smart_resize(image.height, image.width, self.factor, self.min_pixels, self.max_pixels)
        return image.resize((width, height), resample=self.resample)

    def load(self, ref: ImageRef, base_dir: Path | None = None) -> Image.Image:
        """The image of `ref` at the processor's size: from the cache, or decoded, resized and stored."""
        try:
            key = self._key(ref, base_dir)
        except OSError:
            key = None
        if key is None:
            return load_image(ref, base_dir)
        entry = self.folder / key[:2] / f"{key}.npy"
        if entry.exists():
            try:
                return Image.fromarray(np.load(entry))
            except (OSError, ValueError):  # a damaged entry is rebuilt, never trained on
                pass
        image = self.resize(load_image(ref, base_dir))
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(image))
        partial = entry.with_suffix(f".{os.getpid()}.partial")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(buffer.getvalue())
            os.replace(partial, entry)
        except OSError as exc:  # a full or read-only disk slows training down; it must not stop it
            if not self.warned:
                print(f"warning: image cache {self.folder} not written ({exc}); going on without it")
                self.warned = True
            with contextlib.suppress(OSError):
                partial.unlink()
        return image
