"""Weights: offline-first resolution, checksums, and loading without running code."""

from __future__ import annotations

import os
import shlex
import time

import pytest
import torch

import torchbridge
from torchbridge.errors import (
    ChecksumError,
    CorruptWeightsError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from torchbridge.registry import weights as w

TIMM_TAG = "timm/test_resnet.r160_in1k"  # a tiny timm model with published weights
TV_ID = "torchvision/shufflenet_v2_x0_5"  # a small torchvision model


class _ShellPayload:
    """Pickles as a call to os.system: loading it runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class TrainingNote:
    """A harmless custom object that weights_only loading does not allow."""

    def __init__(self, text):
        self.text = text


@pytest.fixture
def timm_model():
    import timm

    return timm.create_model("test_resnet").eval()


@pytest.fixture
def image():
    return torch.randn(2, 3, 64, 64)


def _malicious_checkpoint(path, marker, model):
    torch.save({"state_dict": model.state_dict(), "payload": _ShellPayload(marker)}, path)


class TestUnsafePickles:
    def test_control_the_payload_is_live(self, tmp_path, timm_model):
        """The malicious checkpoint really runs its payload under a full unpickle (so the refusals
        below mean something)."""
        marker = tmp_path / "ran"
        _malicious_checkpoint(tmp_path / "evil.pth", marker, timm_model)
        torch.load(tmp_path / "evil.pth", weights_only=False)
        assert marker.exists()

    def test_malicious_pickle_refused_without_running(self, tmp_path, timm_model, isolated_caches):
        """load_model refuses a checkpoint whose pickle calls os.system, and the payload never
        runs."""
        marker = tmp_path / "pwned"
        evil = tmp_path / "evil.pth"
        _malicious_checkpoint(evil, marker, timm_model)
        with pytest.raises(UnsafeCheckpointError, match="trust_pickle=True") as info:
            torchbridge.load_model(TIMM_TAG, weights=evil)
        assert "system" in str(info.value)
        assert not marker.exists()

    def test_malicious_local_model_refused(self, tmp_path, timm_model, isolated_caches):
        """A local model whose sidecar points at a malicious .pt is refused, and the payload never
        runs."""
        marker = tmp_path / "pwned"
        models = isolated_caches / "torchbridge" / "models"
        models.mkdir(parents=True)
        _malicious_checkpoint(models / "evil.pt", marker, timm_model)
        (models / "evil.json").write_text(
            '{"architecture": "timm/test_resnet", "weights": "evil.pt"}'
        )
        with pytest.raises(UnsafeCheckpointError):
            torchbridge.load_model("local/evil")
        assert not marker.exists()

    def test_trust_flag_loads_a_custom_pickle(self, tmp_path, timm_model, image, isolated_caches):
        """A checkpoint with a custom object is refused by default and loads with
        trust_pickle=True."""
        path = tmp_path / "trained.pth"
        torch.save({"state_dict": timm_model.state_dict(), "note": TrainingNote("epoch 3")}, path)
        with pytest.raises(UnsafeCheckpointError, match="TrainingNote"):
            torchbridge.load_model(TIMM_TAG, weights=path)
        with pytest.warns(UserWarning, match="full pickle"):
            model = torchbridge.load_model(TIMM_TAG, weights=path, trust_pickle=True).eval()
        assert torch.equal(model(image), timm_model(image))
        assert "state_dict" not in model.pretrained_cfg

    def test_plain_pickled_state_dict_loads_safely(
        self, tmp_path, timm_model, image, isolated_caches
    ):
        """A .pth of tensors (wrapped in a training checkpoint with a module. prefix) loads without
        trust."""
        path = tmp_path / "plain.pth"
        state = {f"module.{k}": v for k, v in timm_model.state_dict().items()}
        torch.save({"state_dict": state, "epoch": 3}, path)
        loaded = w.load_state_dict(path)
        assert set(loaded) == set(timm_model.state_dict())
        model = torchbridge.load_model(TIMM_TAG, weights=path).eval()
        assert torch.equal(model(image), timm_model(image))


class TestCorruptFiles:
    def test_truncated_safetensors(self, tmp_path, timm_model, isolated_caches):
        """A truncated safetensors file is a CorruptWeightsError naming the file."""
        from safetensors.torch import save_file

        path = tmp_path / "cut.safetensors"
        save_file(timm_model.state_dict(), str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CorruptWeightsError, match="cut.safetensors"):
            torchbridge.load_model(TIMM_TAG, weights=path)

    def test_truncated_pickle(self, tmp_path, timm_model):
        """A truncated .pth is a CorruptWeightsError, not an unsafe-pickle error."""
        path = tmp_path / "cut.pth"
        torch.save(timm_model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CorruptWeightsError, match="truncated"):
            w.load_state_dict(path)

    @pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
    def test_truncated_small_pickle(self, tmp_path, keep):
        """A small .pth (a head, a linear probe) cut short is a CorruptWeightsError too, whatever
        error torch's zip reader meets."""
        path = tmp_path / "head.pth"
        torch.save({"weight": torch.randn(64, 64), "bias": torch.randn(64)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(CorruptWeightsError, match="truncated"):
            w.load_state_dict(path)

    def test_truncated_legacy_pickle(self, tmp_path):
        """A checkpoint in torch's legacy (non-zip) format cut inside a record is a
        CorruptWeightsError."""
        path = tmp_path / "legacy.pth"
        torch.save({"weight": torch.randn(8, 8)}, path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        for cut in range(1, len(data)):
            path.write_bytes(data[:cut])
            try:
                w.load_state_dict(path)
            except CorruptWeightsError:
                # a record cut inside a global's name too: a pickle that does not reach its
                # end is damaged, not one that would run code
                continue
            raise AssertionError(f"a checkpoint cut at byte {cut} of {len(data)} loaded")

    def test_garbage_file(self, tmp_path):
        """A file that is no checkpoint at all is a CorruptWeightsError."""
        path = tmp_path / "notes.pt"
        path.write_bytes(b"these are not weights")
        with pytest.raises(CorruptWeightsError):
            w.load_state_dict(path)

    @pytest.mark.parametrize("seed", range(24))
    @pytest.mark.parametrize("trust_pickle", [False, True])
    def test_random_bytes_are_corrupt_not_unsafe(self, tmp_path, seed, trust_pickle):
        """Random bytes (which torch's weights_only reader reports as unsupported opcodes) are a
        CorruptWeightsError, never an UnsafeCheckpointError that suggests trust_pickle=True."""
        path = tmp_path / "random.pth"
        path.write_bytes(
            torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(seed))
            .to(torch.uint8)
            .numpy()
            .tobytes()
        )
        with pytest.raises(CorruptWeightsError) as info:
            w.load_state_dict(path, trust_pickle=trust_pickle)
        assert "trust_pickle" not in str(info.value)

    @pytest.mark.parametrize(
        "content",
        [
            b"cos\nsystem\n(S'echo hi'\ntR",  # a pickle that calls a function, cut before STOP
            b"cos\nsystem\nhello world\n",
            b"a text file: weights = [1, 2, 3]\n",
            b"\x80\x02cbuiltins\neval\n",
        ],
    )
    def test_damaged_pickles_naming_globals_are_corrupt(self, tmp_path, content):
        """A stream that names a global but is no whole pickle (it never reaches STOP) is a
        CorruptWeightsError: only a real pickle is 'unsafe'."""
        path = tmp_path / "cut.pth"
        path.write_bytes(content)
        with pytest.raises(CorruptWeightsError):
            w.load_state_dict(path)

    def test_truncated_zip_of_a_malicious_checkpoint(self, tmp_path, timm_model):
        """A zip checkpoint cut short (its central directory gone) is a CorruptWeightsError,
        even when what remains of it held a malicious pickle."""
        path = tmp_path / "cut.pth"
        _malicious_checkpoint(path, tmp_path / "pwned", timm_model)
        data = path.read_bytes()
        for keep in (0.2, 0.5, 0.9, 0.999):
            path.write_bytes(data[: int(len(data) * keep)])
            with pytest.raises(CorruptWeightsError):
                w.load_state_dict(path)
        assert not (tmp_path / "pwned").exists()

    def test_damaged_zip_checkpoint_is_corrupt(self, tmp_path):
        """A zip checkpoint whose data.pkl bytes are damaged (torch's reader meets unknown
        opcodes) is a CorruptWeightsError: the archive's checksum says the pickle is not whole."""
        import struct
        import zipfile

        path = tmp_path / "damaged.pth"
        torch.save({"weight": torch.randn(64, 64), "bias": torch.randn(64)}, path)
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
        name_len, extra_len = struct.unpack(
            "<HH", data[info.header_offset + 26 : info.header_offset + 30]
        )
        start = info.header_offset + 30 + name_len + extra_len  # data.pkl, stored uncompressed
        noise = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(0))
        data[start + 2 : start + 22] = bytes(noise.tolist())
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptWeightsError, match="damaged") as info_:
            w.load_state_dict(path)
        assert "trust_pickle" not in str(info_.value)

    @pytest.mark.parametrize("zipped", [True, False])
    def test_whole_malicious_pickles_stay_unsafe(self, tmp_path, timm_model, zipped):
        """A whole pickle that calls os.system, in torch's zip or legacy format, is still an
        UnsafeCheckpointError, and nothing runs."""
        path = tmp_path / "evil.pth"
        marker = tmp_path / "pwned"
        torch.save(
            {"weight": torch.zeros(2), "payload": _ShellPayload(marker)},
            path,
            _use_new_zipfile_serialization=zipped,
        )
        with pytest.raises(UnsafeCheckpointError, match="system"):
            w.load_state_dict(path)
        assert not marker.exists()

    def test_state_dict_for_another_model(self, tmp_path, isolated_caches):
        """Weights of another architecture are a CorruptWeightsError listing missing and unexpected
        keys."""
        from safetensors.torch import save_file

        path = tmp_path / "other.safetensors"
        save_file(
            {"encoder.weight": torch.zeros(3, 3), "conv1.0.weight": torch.zeros(1)}, str(path)
        )
        with pytest.raises(CorruptWeightsError) as info:
            torchbridge.load_model("torchvision/shufflenet_v2_x0_5", weights=path)
        message = str(info.value)
        assert "missing keys" in message and "unexpected keys" in message
        assert "encoder.weight" in message

    def test_load_into_model_reports_every_kind_of_misfit(self):
        """load_into_model names missing keys, unexpected keys and shape mismatches before copying
        anything."""
        model = torch.nn.Linear(3, 2)
        before = model.weight.detach().clone()
        bad = {"weight": torch.ones(2, 4), "extra": torch.zeros(1)}
        with pytest.raises(CorruptWeightsError) as info:
            w.load_into_model(model, bad, source="test")
        err = info.value
        assert err.missing_keys == ("bias",) and err.unexpected_keys == ("extra",)
        assert "weight: file (2, 4) vs model (2, 3)" in err.mismatched_keys
        assert torch.equal(model.weight, before)


class TestChecksums:
    def test_hash_prefix_in_file_names(self):
        """The sha256 prefix is read from torch.hub-style names only."""
        assert w.hash_prefix_from_filename("resnet18-f37072fd.pth") == "f37072fd"
        assert w.hash_prefix_from_filename("model-1.pth") is None
        assert w.hash_prefix_from_filename("model.safetensors") is None

    def test_sha_mismatch_in_the_hub_cache(self, isolated_caches, tmp_path):
        """A cached torchvision file whose content does not match the hash in its name is a
        ChecksumError."""
        import torchvision

        entry = torchbridge.model_info(TV_ID)
        cached = isolated_caches / "torch" / "hub" / "checkpoints" / entry.weights.filename
        cached.parent.mkdir(parents=True)
        torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), cached)
        with pytest.raises(ChecksumError, match=entry.weights.sha256):
            torchbridge.load_model(TV_ID, pretrained=True)

    def test_check_sha256_accepts_full_digest_and_prefix(self, tmp_path):
        """check_sha256 passes on the full digest or a prefix, and fails on another value."""
        path = tmp_path / "f.bin"
        path.write_bytes(b"abc")
        digest = w.sha256_file(path)
        w.check_sha256(path, digest)
        w.check_sha256(path, digest[:8])
        with pytest.raises(ChecksumError, match=digest):
            w.check_sha256(path, "0" * 64)


class TestMissingWeights:
    def test_offline_timm_names_file_path_and_remedy(self, isolated_caches):
        """Offline, missing timm weights fail at once with the file, the cache path and weights=...
        in the message."""
        start = time.perf_counter()
        with pytest.raises(WeightsNotFoundError) as info:
            torchbridge.load_model(TIMM_TAG, pretrained=True)
        assert time.perf_counter() - start < 5  # no network retries
        message = str(info.value)
        assert "model.safetensors" in message
        assert (
            str(isolated_caches / "hf" / "hub" / "models--timm--test_resnet.r160_in1k") in message
        )
        assert "weights=PATH" in message and "offline" in message

    def test_offline_torchvision_names_checkpoint_path(self, isolated_caches):
        """Offline, missing torchvision weights name the exact file in torch.hub's checkpoints
        folder."""
        entry = torchbridge.model_info(TV_ID)
        with pytest.raises(WeightsNotFoundError) as info:
            torchbridge.load_model(TV_ID, pretrained=True)
        expected = isolated_caches / "torch" / "hub" / "checkpoints" / entry.weights.filename
        assert str(expected) in str(info.value)

    def test_torchbridge_offline_alone_is_honoured(self, isolated_caches, monkeypatch):
        """TORCHBRIDGE_OFFLINE=1 without HF_HUB_OFFLINE still means offline."""
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("TORCHBRIDGE_OFFLINE", "1")
        from torchbridge.registry.paths import is_offline

        assert is_offline()
        with pytest.raises(WeightsNotFoundError, match="offline"):
            torchbridge.load_model(TIMM_TAG, pretrained=True)

    def test_explicit_file_that_does_not_exist(self, tmp_path):
        """weights= naming a missing file says so."""
        with pytest.raises(WeightsNotFoundError, match="does not exist"):
            torchbridge.load_model(TIMM_TAG, weights=tmp_path / "nope.safetensors")

    def test_architecture_without_published_weights(self):
        """pretrained=True on a timm architecture with no published weights says to pass
        weights=PATH."""
        bare = next(e for e in torchbridge.list_models(source="timm", pretrained=False))
        with pytest.raises(WeightsNotFoundError, match="weights=PATH"):
            torchbridge.load_model(bare.id, pretrained=True)
