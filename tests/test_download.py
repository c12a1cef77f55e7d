"""The checkpoint downloader, against a local HTTP server with Range support written here."""

import hashlib
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import diffprior.models as models
from diffprior import GaussianPrior, load_prior
from diffprior.download import ChecksumError, DownloadError, RemoteFile, cache_dir, fetch
from diffprior.models import RemoteModel

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves `files` on loopback. Options: `cut_once` paths are cut off halfway on their first request;
    `ignore_range` answers every request with the whole file. `requests` logs (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])  # then hang up: the client sees a short body
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def ranges(self, path):
        return [r for p, r in self.requests if p == path]


@pytest.fixture
def server():
    s = Server()
    s.files["/model.pt"] = PAYLOAD
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRIOR_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DIFFPRIOR_OFFLINE", raising=False)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pt"  # nothing listens there: connection refused


def test_full_download_with_checksum(server, tmp_path):
    dest = fetch(server.url + "/model.pt", tmp_path / "a" / "model.pt", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pt.part").exists()
    assert server.ranges("/model.pt") == [None]


def test_resume_after_connection_cut(server, tmp_path):
    server.cut_once.add("/model.pt")
    dest = fetch(server.url + "/model.pt", tmp_path / "model.pt", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.ranges("/model.pt")
    assert first is None and second == f"bytes={len(PAYLOAD) // 2}-"  # continued, not restarted


def test_resume_in_a_later_call(server, tmp_path):
    server.cut_once.add("/model.pt")
    dest = tmp_path / "model.pt"
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(server.url + "/model.pt", dest, size=len(PAYLOAD), sha256=SHA, progress=False, attempts=1)
    part = tmp_path / "model.pt.part"
    assert not dest.exists() and part.stat().st_size == len(PAYLOAD) // 2
    fetch(server.url + "/model.pt", dest, size=len(PAYLOAD), sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges("/model.pt")[-1] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "model.pt.part").write_bytes(PAYLOAD[:1000])
    dest = fetch(server.url + "/model.pt", tmp_path / "model.pt", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD  # not the old prefix followed by the whole file


def test_wrong_checksum_deletes_and_explains(server, tmp_path):
    dest = tmp_path / "model.pt"
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}") as err:
        fetch(server.url + "/model.pt", dest, size=len(PAYLOAD), sha256="0" * 64, progress=False)
    assert SHA in str(err.value) and "deleted" in str(err.value)
    assert not dest.exists() and not (tmp_path / "model.pt.part").exists()


def test_wrong_size_is_refused_before_downloading(server, tmp_path):
    with pytest.raises(ChecksumError, match="expected 123"):
        fetch(server.url + "/model.pt", tmp_path / "model.pt", size=123, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_names_url_and_destination(tmp_path):
    url, dest = closed_port_url(), tmp_path / "sub" / "model.pt"
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, size=len(PAYLOAD), progress=False)
    assert url in str(err.value) and str(dest) in str(err.value)
    assert not dest.parent.exists()  # a failed attempt leaves no empty folder in the cache


def test_offline_switch_never_connects(server, tmp_path, monkeypatch):
    dest = tmp_path / "model.pt"
    url = server.url + "/model.pt"
    monkeypatch.setenv("DIFFPRIOR_OFFLINE", "1")
    with pytest.raises(DownloadError, match="downloading is disabled") as err:
        fetch(url, dest, progress=False)
    assert url in str(err.value) and str(dest) in str(err.value)
    monkeypatch.delenv("DIFFPRIOR_OFFLINE")
    with pytest.raises(DownloadError, match="downloading is disabled"):
        fetch(url, dest, progress=False, offline=True)
    assert server.requests == []


def test_http_error_is_explained(server, tmp_path):
    url = server.url + "/absent.pt"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        fetch(url, tmp_path / "absent.pt", progress=False)
    assert url in str(err.value)


# -- the registry of named remote models ----------------------------------------------------------
@pytest.fixture
def local_registry(server, monkeypatch):
    entry = RemoteModel(name="ffhq256-dps", kind="guided-diffusion", config="ffhq256", source="loopback",
                        files=(RemoteFile(server.url + "/model.pt", "model.pt", size=len(PAYLOAD), sha256=SHA),))
    monkeypatch.setitem(models.REMOTE_MODELS, entry.name, entry)
    return entry


def test_diffprior_home_is_the_cache(local_registry, tmp_path, monkeypatch):
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("DIFFPRIOR_HOME", str(home))
    assert cache_dir() == home
    path = models.fetch_remote("ffhq256-dps", progress=False)
    assert path == home / "ffhq256-dps" / "model.pt" and path.read_bytes() == PAYLOAD


def test_cache_in_place_of_a_file_is_refused_with_the_variable(tmp_path, monkeypatch):
    """A DIFFPRIOR_HOME that names a file (or lies under one) cannot hold the cache: say so, not "place it at"
    a path that cannot be created."""
    (tmp_path / "a-file").write_text("")
    for home in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        monkeypatch.setenv("DIFFPRIOR_HOME", str(home))
        with pytest.raises(DownloadError, match=r"\(DIFFPRIOR_HOME\) cannot be made: .*a-file is a file, not a folder"):
            cache_dir()


def test_default_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFPRIOR_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "diffprior"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "diffprior"


def test_cached_file_is_not_downloaded_again(local_registry, server):
    models.fetch_remote("ffhq256-dps", progress=False)
    assert len(server.requests) == 1
    models.fetch_remote("ffhq256-dps", progress=False)
    models.fetch_remote("ffhq256-dps", progress=False, offline=True)
    assert len(server.requests) == 1


def test_list_models_reports_the_cache(local_registry):
    row = next(r for r in models.list_models() if r["name"] == "ffhq256-dps")
    assert row["kind"] == "guided-diffusion" and row["size"] == len(PAYLOAD) and not row["cached"]
    models.fetch_remote("ffhq256-dps", progress=False)
    row = next(r for r in models.list_models() if r["name"] == "ffhq256-dps")
    assert row["cached"]
    path = models.remote_path("ffhq256-dps")
    path.write_bytes(PAYLOAD[:-1])  # cut short: not the model
    assert not next(r for r in models.list_models() if r["name"] == "ffhq256-dps")["cached"]
    assert {r["name"] for r in models.list_models()} >= {"ffhq256-dps", "celebahq256-ddpm", "gmm-demo"}


def test_load_prior_by_name_downloads_then_loads(local_registry, monkeypatch):
    import diffprior.checkpoints.guided_diffusion as guided_diffusion
    calls = []
    stand_in = GaussianPrior(torch.zeros(3), torch.ones(3))  # the ADM loader itself is tested elsewhere
    monkeypatch.setattr(guided_diffusion, "load_guided_diffusion", lambda path, config: calls.append((path, config)) or stand_in,
                        raising=False)
    assert load_prior("ffhq256-dps") is stand_in
    assert calls == [(models.remote_path("ffhq256-dps"), "ffhq256")]
    assert calls[0][0].read_bytes() == PAYLOAD


def test_load_prior_offline_explains(local_registry, monkeypatch):
    monkeypatch.setenv("DIFFPRIOR_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        load_prior("ffhq256-dps")
    assert local_registry.files[0].url in str(err.value)
    assert str(models.remote_path("ffhq256-dps")) in str(err.value)


def test_registry_entries_are_well_formed():
    for m in models.REMOTE_MODELS.values():
        assert m.kind in ("guided-diffusion", "diffusers")
        assert all(f.url.startswith("https://") and f.size for f in m.files)
        assert all(f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256) for f in m.files)
    assert models.REMOTE_MODELS["ffhq256-dps"].config == "ffhq256"
    names = {f.filename for f in models.REMOTE_MODELS["celebahq256-ddpm"].files}
    assert {"config.json", "scheduler_config.json"} <= names


def test_diffusers_model_by_name(server, monkeypatch, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    src = tmp_path / "src"
    unet.save_pretrained(src)
    diffusers.DDPMScheduler(num_train_timesteps=100).save_pretrained(src)
    files = []
    for name in ("config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"):
        data = (src / name).read_bytes()
        server.files["/ddpm/" + name] = data
        files.append(RemoteFile(server.url + "/ddpm/" + name, name, len(data), hashlib.sha256(data).hexdigest()))
    entry = RemoteModel(name="celebahq256-ddpm", kind="diffusers", source="loopback", files=tuple(files))
    monkeypatch.setitem(models.REMOTE_MODELS, entry.name, entry)
    prior = load_prior("celebahq256-ddpm")
    assert prior.schedule.T == 100 and prior.shape == (3, 8, 8)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(prior.eps(x, 4), unet(x, torch.tensor([4])).sample)


def test_offline_multi_file_model_lists_every_missing_file(monkeypatch):
    monkeypatch.setenv("DIFFPRIOR_OFFLINE", "1")
    entry = models.REMOTE_MODELS["celebahq256-ddpm"]
    with pytest.raises(DownloadError) as err:
        models.fetch_remote(entry.name)
    for f in entry.files:
        assert f.url in str(err.value) and str(cache_dir() / entry.name / f.filename) in str(err.value)
