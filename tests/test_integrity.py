"""Checkpoints and saved results are whole or refused; results refuse data and models they were not mined with.

Faults are injected into real files: a flipped byte inside each tensor's bytes of the
``torch.save`` zip, truncations, garbage, hand edits (with and without the checksum), a
process killed in the middle of a save. Every one must be a ValueError that names the
file, and a refused checkpoint must never be resumed.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_deconvviz import MiningResult, _integrity, _result_checks, mine_topk
from captum_deconvviz._fingerprint import dataset_fingerprint, dataset_mismatch, model_fingerprint
from captum_deconvviz._integrity import payload_checksum, remove_stale_temporaries

LAYERS = ["1", "4"]


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()).eval()


def _images(n: int = 20, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def _mine(data: Any, checkpoint: Path | None = None, model: nn.Module | None = None, **kwargs: Any) -> MiningResult:
    options: dict[str, Any] = {"k": 3, "batch_size": 4, "progress": False, **kwargs}
    return mine_topk(model if model is not None else _net(), LAYERS, data, checkpoint=checkpoint, **options)


def _assert_same(a: MiningResult, b: MiningResult) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        for c in range(a.channels(layer)):
            assert a.records(layer, c) == b.records(layer, c)
        for name in ("maximum", "mean", "fraction_active", "nan_count"):
            assert torch.equal(getattr(a.stats(layer), name), getattr(b.stats(layer), name)), name


@pytest.fixture(scope="module")
def plain() -> MiningResult:
    return _mine(_images())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A finished run's checkpoint (next_index = every image)."""
    path = tmp_path / "state.pt"
    _mine(_images(), path)
    return path


@pytest.fixture
def saved(tmp_path: Path, plain: MiningResult) -> Path:
    path = tmp_path / "result.pt"
    plain.save(path)
    return path


def _tensor_members(path: Path) -> list[tuple[str, int, int]]:
    """``(name, offset of its bytes in the file, size)`` of every tensor record of a torch.save zip."""
    raw = path.read_bytes()
    found = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            assert info.compress_type == zipfile.ZIP_STORED  # torch.save stores tensors uncompressed
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
            found.append((info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size))
    return found


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def _edit(path: Path, change: Any, keep_checksum: bool) -> None:
    """Load the payload, change it, save it back: with its old checksum, or as a file without one."""
    payload = torch.load(path, weights_only=True)
    if not keep_checksum:
        del payload["checksum"]
    change(payload)
    torch.save(payload, path)


# ---- flipped bytes -------------------------------------------------------------------------


def test_torch_load_alone_does_not_notice_a_flipped_byte(checkpoint: Path) -> None:
    """Why the checksum exists: the zip members' CRCs are not checked on load."""
    before = torch.load(checkpoint, weights_only=True)
    _, offset, size = max(_tensor_members(checkpoint), key=lambda member: member[2])
    _flip_byte(checkpoint, offset + size // 2)
    after = torch.load(checkpoint, weights_only=True)
    assert payload_checksum(after) != before["checksum"] == payload_checksum(before)


def test_a_flipped_byte_in_any_tensor_of_a_checkpoint_is_refused_and_never_resumed(checkpoint: Path) -> None:
    pristine = checkpoint.read_bytes()
    members = _tensor_members(checkpoint)
    assert len(members) == 7 * len(LAYERS)  # every TopKState tensor of every layer
    for name, offset, size in members:
        checkpoint.write_bytes(pristine)
        _flip_byte(checkpoint, offset + size // 2)
        damaged = checkpoint.read_bytes()
        with pytest.raises(ValueError, match=r"state\.pt is a corrupt mining checkpoint: its checksum") as error:
            _mine(_images(), checkpoint)
        assert "\n" not in str(error.value), name
        assert checkpoint.read_bytes() == damaged  # left as it was, not resumed, not overwritten


def test_a_flipped_byte_in_any_tensor_of_a_result_is_refused(saved: Path) -> None:
    pristine = saved.read_bytes()
    members = _tensor_members(saved)
    assert len(members) == 7 * len(LAYERS)
    for _, offset, size in members:
        saved.write_bytes(pristine)
        _flip_byte(saved, offset + size // 2)
        with pytest.raises(ValueError, match=r"result\.pt is a corrupt saved MiningResult: its checksum"):
            MiningResult.load(saved)


# ---- truncated, garbage, wrong kind ----------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 1000, -1000, -100, -10, -1])
def test_truncated_files_are_refused(checkpoint: Path, saved: Path, keep: int) -> None:
    for path in (checkpoint, saved):
        raw = path.read_bytes()
        path.write_bytes(raw[:keep] if keep >= 0 else raw[: len(raw) + keep])
    checkpoint_error = rf"{re.escape(str(checkpoint))} cannot be read: it is not a mining checkpoint, or a truncated"
    with pytest.raises(ValueError, match=checkpoint_error) as refused:
        _mine(_images(), checkpoint)
    result_error = rf"{re.escape(str(saved))} cannot be read: it is not a saved MiningResult, or a truncated"
    with pytest.raises(ValueError, match=result_error) as refused_result:
        MiningResult.load(saved)
    assert "\n" not in str(refused.value) + str(refused_result.value)  # one line, whatever torch said


def test_garbage_and_other_files_are_refused(tmp_path: Path, saved: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(ValueError, match="garbage.pt cannot be read: it is not a saved MiningResult"):
        MiningResult.load(garbage)
    with pytest.raises(
        ValueError, match="garbage.pt cannot be read: it is not a mining checkpoint.*will not be resumed"
    ):
        _mine(_images(), garbage)
    # A result is not a checkpoint, nor the reverse.
    with pytest.raises(ValueError, match="result.pt is not a mining checkpoint"):
        _mine(_images(), saved)
    other = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="dict.pt is not a saved MiningResult"):
        MiningResult.load(other)


def test_a_payload_missing_keys_is_a_value_error_naming_the_file(saved: Path) -> None:
    pristine = saved.read_bytes()
    for key in ("layers", "meta", "k", "format"):
        saved.write_bytes(pristine)
        _edit(saved, lambda payload, key=key: payload.pop(key), keep_checksum=False)
        problem = (
            "is not a saved MiningResult"
            if key == "format"
            else rf"is a corrupt saved MiningResult: missing \['{key}'\]"
        )
        with pytest.raises(ValueError, match=rf"result\.pt {problem}"):
            MiningResult.load(saved)
    with pytest.raises(ValueError, match=r"the result payload misses \['fingerprint', 'input_shape', 'k'"):
        MiningResult.from_dict({"layers": {}})


# ---- hand edits: caught by the checksum, and by the consistency checks without it ------------


def _set_next_index(value: int) -> Any:
    return lambda payload: payload.__setitem__("next_index", value)


def _drop_layer(payload: dict[str, Any]) -> None:
    del payload["states"]["4"]


def _extra_layer(payload: dict[str, Any]) -> None:
    payload["states"]["2"] = payload["states"]["1"]


def _shrink(name: str) -> Any:
    def change(payload: dict[str, Any]) -> None:
        tensors = payload["states"]["4"]["tensors"]
        tensors[name] = tensors[name][:-1]

    return change


def _narrow_k(payload: dict[str, Any]) -> None:
    tensors = payload["states"]["1"]["tensors"]
    tensors["values"], tensors["key"] = tensors["values"][:, :2], tensors["key"][:, :2]


def _record_of_an_unmined_image(payload: dict[str, Any]) -> None:
    state = payload["states"]["4"]
    state["tensors"]["key"][0, 0] = 25 * state["height"] * state["width"]  # image 25 of 20


def _unranked(payload: dict[str, Any]) -> None:
    values = payload["states"]["1"]["tensors"]["values"]
    values[0] = values[0].flip(0)


def _counts(payload: dict[str, Any]) -> None:
    payload["states"]["1"]["tensors"]["positions"][0] += 1


def _images_count(payload: dict[str, Any]) -> None:
    payload["states"]["1"]["images"] = 19


CHECKPOINT_EDITS = {
    "next_index beyond the data": (_set_next_index(21), r"next_index 21 is not within \[0, 20\]"),
    "next_index before the mined images": (_set_next_index(8), "holds 20 images, but the run had mined 8"),
    "a layer dropped": (_drop_layer, r"missing \['4'\]"),
    "a layer added": (_extra_layer, r"unexpected \['2'\]"),
    "values shrunk": (_shrink("values"), r"key must have shape \[4, 3\] like values"),
    "key shrunk": (_shrink("key"), r"key must have shape \[5, 3\]"),
    "total shrunk": (_shrink("total"), r"total must be int64 \[5, \d+\]"),
    "k narrowed": (_narrow_k, r"\[channels, k=3\]"),
    "a record of an image not mined": (_record_of_an_unmined_image, "refer to image 25, which the run did not mine"),
    "records out of order": (_unranked, "not ranked best first"),
    "counts that do not add up": (_counts, "must count every activation"),
    "images count": (_images_count, "holds 19 images"),
}


@pytest.mark.parametrize("edit", sorted(CHECKPOINT_EDITS))
def test_an_edited_checkpoint_is_refused_with_or_without_its_checksum(checkpoint: Path, edit: str) -> None:
    change, reason = CHECKPOINT_EDITS[edit]
    pristine = checkpoint.read_bytes()
    _edit(checkpoint, change, keep_checksum=True)
    with pytest.raises(ValueError, match="state.pt is a corrupt mining checkpoint: its checksum does not match"):
        _mine(_images(), checkpoint)
    checkpoint.write_bytes(pristine)
    _edit(checkpoint, change, keep_checksum=False)  # as an old checkpoint, written before checksums
    with pytest.raises(ValueError, match=rf"state\.pt is corrupt \(.*{reason}.*\): it will not be resumed"):
        _mine(_images(), checkpoint)


def _record_past_the_dataset(payload: dict[str, Any]) -> None:
    layer = payload["layers"]["4"]
    layer["state"]["key"][0, 0] = 20 * layer["height"] * layer["width"]  # image 20 of 20


RESULT_EDITS = {
    "a record past the dataset": (_record_past_the_dataset, "refer to image 20, which the run did not mine"),
    "values shrunk": (lambda p: p["layers"]["1"]["state"].__setitem__("values", torch.zeros(4, 2)), "k=3"),
    "unknown tensor": (lambda p: p["layers"]["1"]["state"].__setitem__("extra", torch.zeros(1)), "tensors must be"),
    "no layers": (lambda p: p.__setitem__("layers", {}), "non-empty dict"),
    "k not an int": (lambda p: p.__setitem__("k", "3"), "k must be a positive int"),
    "images count": (lambda p: p.__setitem__("num_images", 19), "holds 20 images, but the run had mined 19"),
    "a broken field": (lambda p: p["layers"]["1"]["field"].__setitem__("size", None), "receptive field is malformed"),
}


@pytest.mark.parametrize("edit", sorted(RESULT_EDITS))
def test_an_edited_result_is_refused_with_or_without_its_checksum(saved: Path, edit: str) -> None:
    change, reason = RESULT_EDITS[edit]
    pristine = saved.read_bytes()
    _edit(saved, change, keep_checksum=True)
    with pytest.raises(ValueError, match="result.pt is a corrupt saved MiningResult: its checksum does not match"):
        MiningResult.load(saved)
    saved.write_bytes(pristine)
    _edit(saved, change, keep_checksum=False)
    with pytest.raises(ValueError, match=rf"result\.pt is a corrupt saved MiningResult: .*{reason}"):
        MiningResult.load(saved)


# ---- old files without the new fields --------------------------------------------------------


def _strip_to_old_format(path: Path, *keys: str) -> None:
    payload = torch.load(path, weights_only=True)
    for key in keys:
        payload.pop(key)
    payload.get("meta", {}).pop("data_fingerprint", None)
    torch.save(payload, path)


def test_an_old_result_loads_and_is_checked_by_length_only(saved: Path, plain: MiningResult) -> None:
    _strip_to_old_format(saved, "checksum")
    old = MiningResult.load(saved)
    _assert_same(old, plain)
    with pytest.warns(UserWarning, match=r"only the length of data \(20 images\) can be checked") as warned:
        old.patches(_images(), "4", 0)
    assert warned[0].filename == __file__  # points at the caller
    with pytest.raises(ValueError, match="data has 19 images, but this result was mined on 20"):
        old.patches(_images(19), "4", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per result
        old.patches(_images(seed=5), "4", 1)  # other images of the same length: an old result cannot tell


def _stop_after_batches(model: nn.Module, batches: int) -> None:
    """A forward hook that stops mining (an exception) at mining batch ``batches + 1``."""
    seen = [0]

    def stop(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if inputs[0].shape[0] == 4:  # a mining batch, not shape inference
            seen[0] += 1
            if seen[0] > batches:
                raise RuntimeError("interrupted")

    model[0].register_forward_hook(stop)


def test_an_old_checkpoint_resumes_to_the_same_result(tmp_path: Path, plain: MiningResult) -> None:
    path = tmp_path / "state.pt"
    interrupted = _net()
    _stop_after_batches(interrupted, 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        _mine(_images(), path, interrupted, checkpoint_every=0)
    assert torch.load(path, weights_only=True)["next_index"] == 8
    _strip_to_old_format(path, "checksum", "data")
    _assert_same(_mine(_images(), path), plain)


def test_a_new_checkpoint_resumes_to_the_same_result(tmp_path: Path, plain: MiningResult) -> None:
    path = tmp_path / "state.pt"
    interrupted = _net()
    _stop_after_batches(interrupted, 3)
    with pytest.raises(RuntimeError, match="interrupted"):
        _mine(_images(), path, interrupted, checkpoint_every=0)
    assert torch.load(path, weights_only=True)["next_index"] == 12
    with pytest.raises(ValueError, match="written while mining other data: this data gives another image 0"):
        _mine(_images(seed=7), path)
    _assert_same(_mine(_images(), path), plain)


# ---- killed saves and their temporary files -----------------------------------------------


def test_a_save_killed_midway_resumes_identically_and_its_temporary_file_goes(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    checkpoint = tmp_path / "state.pt"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, torch
            from torch import nn
            from captum_deconvviz import mine_topk
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()).eval()
            images = torch.rand(20, 3, 12, 12, generator=torch.Generator().manual_seed(1))
            if sys.argv[1] == "kill":
                real_save, calls = torch.save, [0]
                def save(obj, f, *args, **kwargs):
                    calls[0] += 1
                    if calls[0] == 3:  # the third checkpoint save dies half written
                        with open(f, "wb") as out:
                            out.write(b"PK half a checkpoint")
                        os.kill(os.getpid(), signal.SIGKILL)
                    real_save(obj, f, *args, **kwargs)
                torch.save = save
            result = mine_topk(model, ["1", "4"], images, k=3, batch_size=4, progress=False,
                               checkpoint={str(checkpoint)!r}, checkpoint_every=0)
            result.save(sys.argv[2])
            """
        )
    )
    killed = subprocess.run([sys.executable, str(script), "kill", str(tmp_path / "x.pt")], check=False)
    assert killed.returncode == -9
    leftovers = [p.name for p in tmp_path.glob(".state.pt.tmp-*")]
    assert len(leftovers) == 1 and re.fullmatch(rf"\.state\.pt\.tmp-\d+@{re.escape(_integrity._HOST)}", leftovers[0])
    assert torch.load(checkpoint, weights_only=True)["next_index"] == 8  # the last whole save
    subprocess.run([sys.executable, str(script), "resume", str(tmp_path / "resumed.pt")], check=True)
    assert list(tmp_path.glob(".state.pt.tmp-*")) == []
    _assert_same(MiningResult.load(tmp_path / "resumed.pt"), _mine(_images()))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporary_files_are_removed_and_live_writers_kept(tmp_path: Path) -> None:
    target = tmp_path / "result.pt"
    host = _integrity._HOST
    files = {
        "dead here": f".result.pt.tmp-{_dead_pid()}@{host}",
        "dead, name without host": f".result.pt.tmp-{_dead_pid()}",
        "live here": f".result.pt.tmp-1@{host}",  # init: alive
        "live id, untouched for hours (reused id)": f".result.pt.tmp-{os.getppid()}@{host}",
        "other host, recent": f".result.pt.tmp-{_dead_pid()}@elsewhere",
        "other host, untouched for hours": f".result.pt.tmp-{_dead_pid()}@elsewhere2",
        "another file's": f".result.pt.bak.tmp-{_dead_pid()}@{host}",
        "not a temporary": ".result.pt.tmp-notes",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"partial")
    hours_ago = time.time() - 2 * _integrity.STALE_AFTER_S
    for key in ("live id, untouched for hours (reused id)", "other host, untouched for hours"):
        os.utime(tmp_path / files[key], (hours_ago, hours_ago))
    stale = ("dead here", "dead, name without host", "live id, untouched for hours (reused id)")
    stale += ("other host, untouched for hours",)
    assert {p.name for p in remove_stale_temporaries(target)} == {files[key] for key in stale}
    assert {p.name for p in tmp_path.iterdir()} == {files[key] for key in files if key not in stale}
    # Every save sweeps: a killed save's file goes, a live writer's stays.
    (tmp_path / files["dead here"]).write_bytes(b"partial")
    _mine(_images()).save(target)
    assert not (tmp_path / files["dead here"]).exists() and (tmp_path / files["live here"]).exists()
    assert MiningResult.load(target).num_images == 20


# ---- results refuse other data and other models -----------------------------------------------


def test_a_result_refuses_other_data_before_any_work(plain: MiningResult) -> None:
    model = _net()
    images = _images()
    assert plain.patches(images.clone(), "4", 0).images.shape[0] == 3  # an equal copy is the same data
    misses = plain.cache_info()["misses"]
    cases = {
        "same length, other images": (_images(seed=9), "gives another image 0 than the mined data"),
        "shuffled": (images.flip(0), "gives another image 0"),
        "renormalized": ((images - 0.5) / 0.25, "gives another image 0"),
        "shorter": (images[:19], "data has 19 images, but this result was mined on 20"),
        "longer": (torch.cat([images, images[:1]]), "data has 21 images, but this result was mined on 20"),
        "other size": (
            torch.rand(20, 3, 14, 14),
            r"shape \[3, 14, 14\], but the mined image 0 had shape \[3, 12, 12\]",
        ),
    }
    for data, reason in cases.values():
        with pytest.raises(ValueError, match=reason):
            plain.patches(data, "4", 0)
        with pytest.raises(ValueError, match=reason):
            plain.projections(model, data, "4")
        with pytest.raises(ValueError, match=reason):
            plain.verify(model, data)
        with pytest.raises(ValueError, match=reason):
            plain.check_data(data)
    assert plain.cache_info()["misses"] == misses  # refused before any crop was looked up


def test_folder_datasets_are_also_compared_by_file_names(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision.transforms import ToTensor

    from captum_deconvviz.data import ImageFiles

    folder = tmp_path / "photos"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = (torch.rand(12, 12, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    result = _mine(ImageFiles(folder, transform=ToTensor()))
    result.check_data(ImageFiles(folder, transform=ToTensor()))
    (folder / "img3.png").rename(folder / "img9.png")  # same images, another order (img3 now last)
    with pytest.raises(ValueError, match="holds other file names"):
        result.check_data(ImageFiles(folder, transform=ToTensor()))


def test_a_slightly_different_decode_of_the_same_images_is_the_same_data(plain: MiningResult) -> None:
    """Another JPEG decoder or resize implementation changes pixels by a level or two: still the data."""
    jittered = _images() + (torch.rand(20, 3, 12, 12, generator=torch.Generator().manual_seed(3)) - 0.5) * 2 / 255
    plain.check_data(jittered)
    assert dataset_mismatch(plain.meta["data_fingerprint"], dataset_fingerprint(jittered)) is None
    assert dataset_mismatch(plain.meta["data_fingerprint"], dataset_fingerprint(_images() * 1.2)) is not None


class _Augmented(Dataset):
    """A dataset with a random transform: other pixels on every read."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index] + torch.rand(self.images[index].shape)


def test_data_that_changes_on_every_read_is_warned_about_not_refused(plain: MiningResult) -> None:
    with pytest.warns(UserWarning, match="gives other images each time it is read") as warned:
        plain.check_data(_Augmented(_images()))
    assert warned[0].filename == __file__


def test_a_result_refuses_another_model(plain: MiningResult) -> None:
    images = _images()
    plain.projections(_net(), images, "4", 0)  # equal weights in another object: the same model
    other = _net(seed=1)
    with pytest.raises(ValueError, match=r"model is not the model this result was mined with \(fingerprint"):
        plain.projections(other, images, "4", 0)
    tweaked = _net()
    with torch.no_grad():
        tweaked[3].bias[0] += 1e-3
    with pytest.raises(ValueError, match="model is not the model this result was mined with"):
        plain.projections(tweaked, images, "4", 0)
    assert model_fingerprint(_net()) == plain.fingerprint


def test_checks_are_done_once_per_data_object_and_model(plain: MiningResult, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"data": 0, "model": 0}
    real_data, real_model = _result_checks.dataset_fingerprint, _result_checks.model_fingerprint

    def count_data(data: Any) -> dict[str, Any]:
        calls["data"] += 1
        return real_data(data)

    def count_model(model: nn.Module) -> str:
        calls["model"] += 1
        return real_model(model)

    monkeypatch.setattr(_result_checks, "dataset_fingerprint", count_data)
    monkeypatch.setattr(_result_checks, "model_fingerprint", count_model)
    result = MiningResult.from_dict(plain.to_dict())
    model, images = _net(), _images()
    for channel in range(result.channels("4")):
        result.patches(images, "4", channel)
        result.projections(model, images, "4", channel)
    assert calls == {"data": 1, "model": 1}
    images[0, 0, 0, 0] += 1.0  # an in-place edit: checked again, and refused
    with pytest.raises(ValueError, match="gives another image 0"):
        result.patches(images, "4", 0)
    with torch.no_grad():
        model[0].weight.mul_(2)
    with pytest.raises(ValueError, match="not the model this result was mined with"):
        result.projections(model, _images(), "4", 0)


def test_merge_refuses_shards_of_other_data() -> None:
    images = _images()
    first = _mine(images, shard=(0, 2))
    second = _mine(_images(seed=4), shard=(1, 2))
    with pytest.raises(ValueError, match="cannot merge results mined on different data"):
        MiningResult.merge([first, second])
    _assert_same(MiningResult.merge([first, _mine(images, shard=(1, 2))]), _mine(images))


def test_a_saved_result_round_trips_and_keeps_its_fingerprints(saved: Path, plain: MiningResult) -> None:
    loaded = MiningResult.load(saved)
    _assert_same(loaded, plain)
    assert loaded.meta["data_fingerprint"] == plain.meta["data_fingerprint"]
    assert loaded.meta["data_fingerprint"]["length"] == 20
    assert loaded.verify(_net(), _images()) == 3 * (4 + 5)
