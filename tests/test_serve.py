"""`diffprior serve`, the web app, end to end: a real server started on 127.0.0.1 by the command line, driven
through gradio_client (the app's functions as the page calls them) and through a headless Chromium (Debian's
chromium and chromium-driver; .ci/run installs them). Everything runs on the built-in analytic prior with a
few steps, so the whole file takes seconds."""

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffprior.cli import build_parser
from diffprior.cli import main as cli_main
from diffprior.io import save_image
from diffprior.models import load_prior

import gradio_client  # the web extra, also in the test extra: pip install "diffprior[web]"
from gradio_client import Client, handle_file

SIZE = 64
MAX_PIXELS = 1_000_000  # the server under test refuses larger images (checked in the header)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`diffprior serve` in its own process on a free port of 127.0.0.1 (the default host), with its temporary
    folder under the test's own; yields (url, that temporary root). Stopping it (`kill`, SIGTERM) must remove
    the app's folder."""
    root = tmp_path_factory.mktemp("serve")
    tmp = root / "tmp"
    tmp.mkdir()
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "diffprior", "serve", "--model", "gmm-demo", "--device", "cpu",
                             "--port", str(port), "--max-pixels", str(MAX_PIXELS)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail("diffprior serve exited early:\n" + (root / "server.log").read_text())
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("diffprior serve did not answer within 120 s:\n" + (root / "server.log").read_text())
            time.sleep(0.3)
    yield url, tmp
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    text = (root / "server.log").read_text()
    assert f"127.0.0.1:{port}" in text
    assert proc.returncode == 130 and text.rstrip().endswith("diffprior serve: interrupted (SIGTERM)"), text[-500:]
    # every refusal (the app's, and Gradio's own of a file a request did not upload) was the client's message,
    # never a traceback on the server's console
    assert "Traceback" not in text, text[text.index("Traceback") - 300:][:3000]
    # every file the app (and Gradio in it) wrote was inside its own folder, which it removed
    assert not list(tmp.iterdir()), f"left behind: {list(tmp.iterdir())}"


@pytest.fixture(scope="module")
def clean_png(tmp_path_factory):
    """A 64x64 picture drawn from the built-in Gaussian-mixture prior."""
    x = load_prior("gmm-demo").sample(1, torch.Generator().manual_seed(5)).float().clamp(-1, 1)
    return save_image(x, tmp_path_factory.mktemp("photo") / "clean.png")


def client(url, tmp_path) -> Client:
    """A new client (with its own app state) that downloads the results into the test's folder."""
    return Client(url, verbose=False, download_files=str(tmp_path / "downloads"))


def restore(c, task, methods, *, steps=10, sigma_y=0.05, samples=1, measured=False, seed=0, layers=()):
    editor = {"background": None, "layers": [handle_file(str(p)) for p in layers], "composite": None}
    gallery, table, files, _ = c.predict(editor, task, methods, steps, sigma_y, seed, samples, measured,
                                         api_name="/restore")
    return gallery, table, {Path(f).name: Path(f) for f in files}


def test_serve_binds_to_this_machine_only_unless_told():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


@pytest.mark.parametrize("host,message", [("no-such-host.invalid", "--host no-such-host.invalid: no such address"),
                                          ("192.0.2.1", "--host must be an address of this machine"),
                                          ("127.0.0.1", "Address already in use; choose another --port")])
def test_an_address_it_cannot_listen_on_is_refused_before_the_model_loads(capsys, monkeypatch, host, message):
    monkeypatch.setattr("diffprior.commands.serve.pick_device", lambda *_: pytest.fail("went on to load"))
    with socket.socket() as taken:  # a server already on the port (for 127.0.0.1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--host", host, "--port", str(port), "--model", "gmm-demo"]) == 2
    assert message in capsys.readouterr().err


def test_restore_two_methods_and_rerun_with_the_cli(server, clean_png, tmp_path, monkeypatch):
    url, _ = server
    c = client(url, tmp_path)
    editor, about, *_ = c.predict(handle_file(str(clean_png)), api_name="/upload")
    assert "64x64" in about
    gallery, table, files = restore(c, "box-inpaint", ["dps", "ddnm"])
    captions = [g["caption"] for g in gallery]
    assert [cap.split(":")[0] for cap in captions] == ["photo (clean)", "measurement (box-inpaint)", "naive",
                                                       "dps", "ddnm"]
    assert set(files) == {"input.png", "restored_dps.png", "restored_ddnm.png", "settings.json"}
    for name in ("restored_dps.png", "restored_ddnm.png"):
        assert Image.open(files[name]).size == (SIZE, SIZE)
    rows = {r[0]: r for r in table["data"]}
    assert list(rows) == ["naive", "dps", "ddnm"]
    psnr = {k: float(r[1]) for k, r in rows.items()}
    assert psnr["ddnm"] > psnr["naive"] + 3  # DDNM fills the box far better than the mean colour
    assert all(float(r[4]) > 0 for r in rows.values())  # the residual ||y - A x||, always shown

    # settings.json holds the equivalent command lines: the CLI, run on the downloads, gives the same image
    report = json.loads(files["settings.json"].read_text())
    assert report["task"] == "box-inpaint" and report["steps"] == 10 and report["methods"] == ["dps", "ddnm"]
    assert report["results"]["ddnm"]["psnr"] == pytest.approx(psnr["ddnm"], abs=0.01)
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    shutil.copy(files["input.png"], rerun / "input.png")
    monkeypatch.chdir(rerun)
    for command in report["commands"]:
        argv = shlex.split(command)
        assert argv[:2] == ["diffprior", "restore"]
        assert cli_main(argv[1:] + ["--json"]) == 0
        out = argv[argv.index("--out") + 1]
        mine = np.asarray(Image.open(rerun / out), dtype=int)
        app = np.asarray(Image.open(files[out]), dtype=int)
        assert np.abs(mine - app).max() <= 1, f"{command} does not reproduce the app's {out}"


def test_painted_mask_with_posterior_samples(server, clean_png, tmp_path):
    url, _ = server
    c = client(url, tmp_path)
    c.predict(handle_file(str(clean_png)), api_name="/upload")
    # a brush stroke on the editor's canvas (the photo shown 4x enlarged): a painted square, 8x8 model pixels
    layer = np.zeros((4 * SIZE, 4 * SIZE, 4), dtype=np.uint8)
    layer[80:112, 120:152] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "stroke.png")
    gallery, table, files = restore(c, "inpaint", ["ddnm"], samples=4, sigma_y=0.01, layers=[tmp_path / "stroke.png"])
    assert {"mask.png", "restored_ddnm.png", "restored_ddnm_std.png", "settings.json"} <= set(files)
    mask = np.asarray(Image.open(files["mask.png"])) > 127  # white = known
    assert mask.shape == (SIZE, SIZE) and (~mask).sum() == 8 * 8 and not mask[20:28, 30:38].any()
    std = np.asarray(Image.open(files["restored_ddnm_std.png"]).convert("L"), dtype=float)
    # the samples disagree where the photo was painted over, and agree on the pixels measured (nearly noiseless)
    assert std[~mask].mean() > 10 * std[mask].mean()
    assert gallery[-2]["caption"].startswith("ddnm mean (K=4)") and gallery[-1]["caption"].startswith("ddnm std")
    report = json.loads(files["settings.json"].read_text())
    assert "--mask mask.png" in report["commands"][0] and "--samples 4" in report["commands"][0]


def test_a_painted_mask_fills_the_holes_of_the_whole_upload(server, clean_png, tmp_path, monkeypatch):
    url, _ = server
    c = client(url, tmp_path)
    photo = Image.new("RGB", (96, 80), (200, 30, 30))  # a red border left and right of the 80x80 centre
    photo.paste(Image.open(clean_png).resize((80, 80), Image.LANCZOS), (8, 0))
    (tmp_path / "upload").mkdir()
    photo.save(tmp_path / "upload" / "input.png")  # named as the app's own download of the model-size input
    c.predict(handle_file(str(tmp_path / "upload" / "input.png")), api_name="/upload")
    layer = np.zeros((4 * SIZE, 4 * SIZE, 4), dtype=np.uint8)
    layer[80:112, 120:152] = (255, 0, 255, 255)  # model pixels: rows 20-27, columns 30-37
    Image.fromarray(layer, "RGBA").save(tmp_path / "stroke.png")
    _, _, files = restore(c, "inpaint", ["ddnm"], measured=True, layers=[tmp_path / "stroke.png"])
    full = np.asarray(Image.open(files["restored_ddnm_full.png"]), dtype=int)
    assert full.shape == (80, 96, 3)
    known = np.ones((80, 96), dtype=bool)
    known[25:35, 45:55] = False  # the 8x8 model pixels, stretched over the 80x80 centre (offset 8)
    assert np.array_equal(full[known], np.asarray(photo, dtype=int)[known])  # every other pixel as it was
    assert np.abs(full[~known] - np.asarray(photo, dtype=int)[~known]).max() > 10  # the holes filled
    report = json.loads(files["settings.json"].read_text())
    assert "your photo input.png, saved as photo_input.png" in report["note"] and len(report["commands"]) == 2
    rerun_full_size(report, files, tmp_path / "upload" / "input.png", tmp_path, monkeypatch, "photo_input.png")


def rerun_full_size(report, files, photo, tmp_path, monkeypatch, saved_as=None):
    """The CLI reproduces the app's files of a painted mask on an upload of another size: the model-size one
    from input.png, the full-size one from the photo (saved under the name the note gives)."""
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    for name in ("input.png", "mask.png"):
        shutil.copy(files[name], rerun / name)
    shutil.copy(photo, rerun / (saved_as or photo.name))
    monkeypatch.chdir(rerun)
    for command in report["commands"]:
        argv = shlex.split(command)
        assert cli_main(argv[1:] + ["--json"]) == 0
        out = argv[argv.index("--out") + 1]
        mine = np.asarray(Image.open(rerun / out), dtype=int)
        app = np.asarray(Image.open(files[out]), dtype=int)
        assert mine.shape == app.shape and np.abs(mine - app).max() <= 1, f"{command} differs from the app's {out}"


def test_choose_the_square_to_restore_in_a_photo_of_another_size(server, clean_png, tmp_path, monkeypatch):
    url, _ = server
    c = client(url, tmp_path)
    photo = Image.new("RGB", (120, 80), (200, 30, 30))  # the picture at the left edge, red to its right
    photo.paste(Image.open(clean_png).resize((80, 80), Image.LANCZOS), (0, 0))
    photo.save(tmp_path / "off centre.png")
    _, about, whole, *sliders = c.predict(handle_file(str(tmp_path / "off centre.png")), api_name="/upload")
    assert "centre crop" in about and sliders == [50, 50, 100]
    assert whole["visible"] and Image.open(whole["value"]).size == (256, 171)  # the whole upload, shown 256 wide
    editor, about, whole = c.predict(0, 50, 100, api_name="/square")  # to the left edge
    assert "the square 0,0,80" in about
    shown = np.asarray(Image.open(editor["background"]).convert("RGB"), dtype=int)
    picture = np.asarray(Image.open(clean_png).convert("RGB").resize((4 * SIZE, 4 * SIZE), Image.NEAREST), dtype=int)
    assert np.abs(shown - picture).mean() < 6  # the picture, not the red border
    framed = np.asarray(Image.open(whole["value"]).convert("RGB"), dtype=int)
    assert (framed[85, 0] == (255, 0, 255)).all() and (framed[85, 170] == (255, 0, 255)).all()  # 80 px * 256 / 120
    assert (framed[85, 220] == (200, 30, 30)).all()
    # a painted mask on that square: the holes filled in the whole photo, where that square lies
    layer = np.zeros((4 * SIZE, 4 * SIZE, 4), dtype=np.uint8)
    layer[80:112, 120:152] = (255, 0, 255, 255)  # model pixels: rows 20-27, columns 30-37
    Image.fromarray(layer, "RGBA").save(tmp_path / "stroke.png")
    _, _, files = restore(c, "inpaint", ["ddnm"], measured=True, layers=[tmp_path / "stroke.png"])
    full = np.asarray(Image.open(files["restored_ddnm_full.png"]), dtype=int)
    known = np.ones((80, 120), dtype=bool)
    known[25:35, 37:47] = False  # the 8x8 model pixels, stretched over the 80x80 square at the left edge
    assert np.array_equal(full[known], np.asarray(photo, dtype=int)[known])
    assert np.abs(full[~known] - np.asarray(photo, dtype=int)[~known]).max() > 10
    report = json.loads(files["settings.json"].read_text())
    assert report["crop"] == [0, 0, 80] and "--crop 0,0,80" in report["commands"][1]
    rerun_full_size(report, files, tmp_path / "off centre.png", tmp_path, monkeypatch)
    # back to the middle: the central square, as the command line takes it without --crop
    _, about, _ = c.predict(50, 50, 100, api_name="/square")
    assert "centre crop" in about


def test_no_square_to_choose_in_a_photo_of_the_models_size_or_out_of_range(server, clean_png, tmp_path):
    url, _ = server
    c = client(url, tmp_path)
    with pytest.raises(gradio_client.exceptions.AppError, match="upload a photo first"):
        c.predict(0, 50, 100, api_name="/square")
    _, _, whole, *_ = c.predict(handle_file(str(clean_png)), api_name="/upload")
    assert not whole["visible"] and whole["value"] is None  # nothing to frame
    with pytest.raises(gradio_client.exceptions.AppError, match="already the model's square"):
        c.predict(0, 50, 100, api_name="/square")


def test_an_already_damaged_low_resolution_photo(server, tmp_path):
    url, _ = server
    c = client(url, tmp_path)
    small = load_prior("gmm-demo").sample(1, torch.Generator().manual_seed(7)).float().clamp(-1, 1)
    save_image(torch.nn.functional.avg_pool2d(small, 4), tmp_path / "low.png")  # 16x16
    c.predict(handle_file(str(tmp_path / "low.png")), api_name="/upload")
    c.predict(0, 0, 50, api_name="/square")  # a part of it: not what the low-resolution image measures
    with pytest.raises(gradio_client.exceptions.AppError, match="is restored whole: set the square back"):
        restore(c, "sr4", ["ddnm"], measured=True)
    c.predict(50, 50, 100, api_name="/square")
    gallery, table, files = restore(c, "sr4", ["ddnm"], measured=True)
    assert Image.open(files["restored_ddnm.png"]).size == (SIZE, SIZE)
    assert Image.open(files["input.png"]).size == (16, 16)  # the measurement itself, for the CLI's --measured
    rows = {r[0]: r for r in table["data"]}
    assert rows["ddnm"][1] == "-" and float(rows["ddnm"][4]) > 0  # no clean photo: no PSNR, a residual
    assert "--measured" in json.loads(files["settings.json"].read_text())["commands"][0]


def test_draw_a_picture_from_the_prior(server, tmp_path):
    url, _ = server
    editor, about, _ = client(url, tmp_path).predict(3, api_name="/draw")
    assert "drawn from gmm-demo" in about
    assert Image.open(editor["background"]).size == (4 * SIZE, 4 * SIZE)  # shown enlarged for painting


def test_bad_uploads_and_requests_get_the_apps_message(server, clean_png, tmp_path):
    url, _ = server
    c = client(url, tmp_path)
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("not an image either")
    Image.new("L", (2000, 1000)).save(tmp_path / "huge.png")  # 2 million pixels, a few kB of PNG
    expected = [
        (lambda: restore(c, "box-inpaint", ["dps"]), "upload a photo or draw a face first"),
        (lambda: c.predict(handle_file(str(tmp_path / "notes.png")), api_name="/upload"), "cannot read notes.png"),
        (lambda: c.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/upload"),
         "not an image by its name: upload a photo"),
        (lambda: c.predict(handle_file(str(tmp_path / "huge.png")), api_name="/upload"), "claims 2000x1000 pixels"),
    ]
    for call, message in expected:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            call()
    c.predict(handle_file(str(clean_png)), api_name="/upload")
    for kwargs, message in [
        (dict(task="inpaint", methods=["dps"]), "paint the missing region"),
        (dict(task="sr4", methods=["dps"], measured=True), "exactly 16x16 pixels"),
        (dict(task="box-inpaint", methods=[]), "pick at least one method"),
        (dict(task="box-inpaint", methods=["dps"], steps=5000), "at most the prior's T = 1000"),
        (dict(task="box-inpaint", methods=["dps"], steps=2.5), "steps must be a whole number"),  # not rounded
        (dict(task="box-inpaint", methods=["dps"], steps=True), "steps must be a whole number"),  # not 1
        (dict(task="box-inpaint", methods=["dps"], sigma_y=1e30), "sigma_y must be a number from 0 to 10, got 1e"),
        (dict(task="box-inpaint", methods=["dps"], measured="no"), "measured must be true or false, got 'no'"),
    ]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            restore(c, **kwargs)


def test_a_painted_layer_too_large_to_decode_is_refused_before_decoding(server, clean_png, tmp_path):
    """Gradio decodes the editor's layers before the app sees them: the server's Pillow refuses more than twice
    --max-pixels (here 2 million) instead of decoding whatever a request sends."""
    url, _ = server
    c = client(url, tmp_path)
    c.predict(handle_file(str(clean_png)), api_name="/upload")
    Image.new("LA", (2100, 1000)).save(tmp_path / "layer.png")  # 2.1 million pixels, a few kB of PNG
    with pytest.raises(gradio_client.exceptions.AppError, match="a painted layer claims 2,100,000 pixels, more "
                       "than twice the 1,000,000 this app decodes: send layers of the editor's canvas size"):
        restore(c, "inpaint", ["dps"], steps=2, layers=[tmp_path / "layer.png"])


def send(url, api, *data):
    """What the server answers a request that gradio_client would not send (`data` as JSON, as it is): the
    error's text, or None when the request succeeded."""
    post = urllib.request.Request(f"{url}gradio_api/call/{api}", json.dumps({"data": list(data)}).encode(),
                                  {"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=30) as r:
        event = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event}", timeout=60) as r:
        last = [line for line in r.read().decode().splitlines() if line.startswith("data:")][-1]
    return (json.loads(last[5:]) or {}).get("error")


def test_files_a_request_did_not_upload_are_refused_without_a_traceback(server):
    """Gradio refuses (and the app never reads) a file outside its upload folder: the client hears so in one
    sentence, and the server's console shows no traceback."""
    url, tmp = server
    app_folder, = tmp.glob("diffprior-serve-*")
    for path in ["/etc/passwd", str(tmp), str(app_folder / "jobs")]:  # a file, a folder, the app's own jobs
        file = {"path": path, "meta": {"_type": "gradio.FileData"}}
        assert send(url, "upload", file).startswith("no such uploaded file: upload the file first")
        editor = {"background": None, "layers": [file], "composite": None}
        assert send(url, "restore", editor, "inpaint", ["ddnm"], 3, 0.05, 0, 1, False).startswith(
            "no such uploaded file")
    for value in ["/etc/passwd", 3, {"path": "x.png"}]:  # not Gradio's form of a file
        assert send(url, "upload", value).startswith("malformed request: send the values")
    log = (tmp.parent / "server.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback"):][:3000]


# -- a real browser ---------------------------------------------------------------------------------
def test_in_a_headless_browser_choose_the_square_paint_a_mask_and_restore(server, clean_png, tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:  # not a skip: CI installs both (.ci/run), and a skipped browser test would hide a broken page
        pytest.fail(f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver) to run the browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1500", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file], "
                                                     "input[data-testid='Upload a photo-upload-button']"))
        # a portrait photo: move the square the model sees to its top by typing into the slider's box
        Image.open(clean_png).resize((80, 120)).save(tmp_path / "portrait.png")
        upload.send_keys(str(tmp_path / "portrait.png"))
        wait.until(lambda d: "portrait.png" in d.find_element(By.ID, "about").text)
        down = driver.find_element(By.CSS_SELECTOR, "#down input[type=number]")
        down.send_keys(Keys.CONTROL, "a")
        down.send_keys("0", Keys.ENTER)
        wait.until(lambda d: "the square 0,0,80" in d.find_element(By.ID, "about").text)
        assert driver.find_element(By.CSS_SELECTOR, "#whole img").get_attribute("src")
        upload.send_keys(str(clean_png))
        wait.until(lambda d: "clean.png" in d.find_element(By.ID, "about").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#whole img")  # no other square in a 64x64 photo
        # paint a stroke across the middle of the photo with the brush (the editor's default tool), once the
        # editor has redrawn itself around the new photo (a stroke on the canvas it replaces is lost: on a busy
        # machine that can take longer, and the app then asks for a painting; paint again)
        driver.find_element(By.XPATH, "//*[@id='task']//label[contains(., 'painted mask')]").click()
        steps = driver.find_element(By.CSS_SELECTOR, "#steps input")
        steps.clear()
        steps.send_keys("5")
        for attempt in range(3):
            time.sleep(2 * (attempt + 1))
            canvas = driver.find_elements(By.CSS_SELECTOR, "#photo canvas")[-1]
            stroke = ActionChains(driver).move_to_element_with_offset(canvas, -40, -30).click_and_hold()
            for _ in range(8):
                stroke = stroke.move_by_offset(10, 6)
            stroke.release().perform()
            toasts = len(driver.find_elements(By.CSS_SELECTOR, ".toast-body"))
            driver.find_element(By.ID, "restore").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img")) >= 5
                       or len(d.find_elements(By.CSS_SELECTOR, ".toast-body")) > toasts)
            errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".toast-body")[toasts:]]
            if not any("paint the missing region" in e for e in errors):
                break
        assert not errors, f"the app reported: {errors}"
        # the file list, not the component's label (which names settings.json too)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#downloads a[download="settings.json"]'))
        assert "ddnm" in driver.find_element(By.ID, "metrics").text
        driver.save_screenshot(str(tmp_path / "serve.png"))
        images = driver.find_elements(By.CSS_SELECTOR, "#results img")
        assert len(images) == 5  # photo, measurement, naive, dps, ddnm
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im)
                                 for im in images))  # each one loads (slowly on a busy machine)
        text = driver.find_element(By.ID, "results").text
        assert "measurement (inpaint)" in text and "dps" in text and "ddnm" in text
    finally:
        driver.quit()
    assert Image.open(tmp_path / "serve.png").size[0] > 0


# -- the upload limits, on the app's own object (no server) -------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    import io
    import struct
    import zlib
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # the IHDR chunk's type and data; its CRC follows
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_the_square_of_a_photo_of_any_shape(tmp_path):
    from diffprior.commands.serve import Studio
    folder = tmp_path / "app"
    (folder / "jobs").mkdir(parents=True)
    studio = Studio("gmm-demo", torch.device("cpu"), folder)
    for size, choice, crop, shown in [((3000, 20), (0, 0, 10), (0, 0, 2), (256, 2)),  # a square under a pixel shown
                                      ((1, 500), (50, 50, 100), None, (1, 256)),  # 50, 50, 100: the central one
                                      ((101, 80), (100, 100, 50), (61, 40, 40), (256, 203))]:
        Image.new("RGB", size, (90, 120, 200)).save(folder / "photo.png")
        source = studio.choose_square(studio.source_from_upload(folder / "photo.png"), *choice)
        assert source["crop"] == crop and source["photo"].size == (SIZE, SIZE)
        assert studio.overview(source).size == shown


def test_uploads_over_the_limits_or_outside_the_apps_folder_are_refused(tmp_path):
    from diffprior.commands.serve import AppError, Studio
    folder = tmp_path / "app"
    (folder / "jobs").mkdir(parents=True)
    studio = Studio("gmm-demo", torch.device("cpu"), folder, max_pixels=10_000, max_bytes=20_000)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(folder / "noise.png")  # ~30 kB
    Image.new("RGB", (101, 100)).save(folder / "wide.png")
    (folder / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    Image.new("RGB", (64, 64)).save(tmp_path / "elsewhere.png")
    for path, message in [(folder / "noise.png", "takes uploads up to 0.02 MB"),
                          (folder / "wide.png", "claims 101x100 pixels, more than the 10,000"),
                          # called a "decompression bomb", with Pillow's limit as its count, where a photo too large
                          # for the app's limit but not for twice it got the hint to shrink it
                          (folder / "bomb.png", "claims 10,000,000,000 pixels, more than the 10,000 this app decodes: "
                                                "make it smaller first"),
                          (tmp_path / "elsewhere.png", "only reads files that were uploaded")]:
        with pytest.raises(AppError, match=message):
            studio.open_upload(path)
    source = studio.source_from_upload(_save(Image.new("RGB", (100, 80), "red"), folder / "ok.png"))
    assert source["photo"].size == (SIZE, SIZE) and source["raw"] is None and source["size"] == (100, 80)


def test_requests_that_cannot_run_are_refused_first_and_a_failing_method_keeps_the_others(tmp_path, diverge):
    from diffprior.commands import serve
    from diffprior.commands.serve import AppError, Studio
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    source = studio.draw(0)
    jobs = tmp_path / "app" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    before = sorted(jobs.iterdir())
    run = dict(steps=3, sigma_y=0.05, seed=0)
    for task, methods, changed, message in [
        ("gaussian-blur", ["dps", "repaint"], {}, "repaint: inpainting only"),  # dps would have run first
        ("box-inpaint", ["dps"], {"seed": 2 ** 63}, "seed must be a whole number from 0"),
        ("box-inpaint", ["dps"], {"sigma_y": 11}, "sigma_y must be a number from 0 to 10, got 11"),
        ("box-inpaint", ["dps"], {"sigma_y": float("nan")}, "sigma_y must be a number from 0 to 10"),
        ("box-inpaint", ["dps"], {"sigma_y": "much"}, "sigma_y must be a number from 0 to 10, got 'much'"),
        ("box-inpaint", ["dps", "tv"], {"steps": 1001}, "at most the prior's T = 1000"),
        ("box-inpaint", ["dps", "tv"], {"samples": 4}, "tv: draws nothing at random"),
        ("box-inpaint", ["dps", "daps"], {"sigma_y": 0}, "daps: DAPS models Gaussian measurement noise"),
        ("x" * 10_000, ["dps"], {}, "unknown task 'x{59}; choose one of"),  # an API's value: not echoed whole
        ("box-inpaint", ["dps"], {"measured": "no"}, "measured must be true or false"),  # not a true string
    ]:
        with pytest.raises(AppError, match=message):
            studio.restore(source, None, task, methods, **(run | changed))
    assert sorted(jobs.iterdir()) == before  # no job was started
    shutil.rmtree(jobs)  # as a cleaner of temporary files might
    diverge(serve, "daps", "daps diverged (x is not finite): lower its step size (scale / step_size / lr)")
    done = studio.restore(source, None, "box-inpaint", ["dps", "daps"], **(run | {"seed": 2 ** 63 - 1}))
    assert done["rows"][1][0] == "dps" and done["rows"][1][1] != "-"  # kept, though daps then failed
    assert done["rows"][2][0] == ("daps failed: daps diverged (x is not finite): lower its step size (scale / "
                                  "step_size / lr); in this app, try more steps or a larger sigma_y (the command "
                                  "line's restore --set sets the step size)")  # what the app can change
    assert [Path(f).name for f in done["files"]] == ["input.png", "restored_dps.png", "settings.json"]
    tv = studio.restore(source, None, "box-inpaint", ["tv"], **(run | {"steps": 1500}))  # iterations, not T's steps
    assert tv["rows"][1][0] == "tv" and tv["report"]["steps"] == 1500


def test_unreadable_uploads_say_why_and_what_to_do(tmp_path):
    from diffprior.commands.serve import AppError, Studio
    folder = tmp_path / "app"
    (folder / "jobs").mkdir(parents=True)
    studio = Studio("gmm-demo", torch.device("cpu"), folder)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("a text file, renamed")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:500])  # an interrupted download
    for name, message in [("empty.png", "cannot read empty.png as an image: the file is empty"),
                          ("notes.png", "cannot read notes.png as an image: it is in no image format this app knows"),
                          ("cut.jpg", r"cannot read cut.jpg as an image \(.+\): is the file damaged or incomplete"),
                          ("gone.png", "cannot read gone.png: the uploaded file is gone; upload it again")]:
        with pytest.raises(AppError, match=message) as e:
            studio.open_upload(folder / name)
        assert str(folder) not in str(e.value)  # the server's paths are no business of the page


def test_a_painting_that_leaves_nothing_and_endless_runs_are_refused(tmp_path, monkeypatch):
    import gradio as gr
    from diffprior.commands.serve import APP_MAX_TV_STEPS, AppError, Studio, build_app
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    fns = {fn.api_name: fn.fn for fn in build_app(studio).fns.values()}
    source = studio.draw(0)
    monkeypatch.setattr("diffprior.commands.serve.solve", lambda *a, **k: pytest.fail("a method ran"))
    stroke = np.zeros((4 * SIZE, 4 * SIZE, 4), dtype=np.uint8)
    stroke[80:112, 120:152] = (255, 0, 255, 255)
    everything = np.full((4 * SIZE, 4 * SIZE, 4), 255, dtype=np.uint8)
    half = Image.fromarray(stroke, "RGBA").resize((2 * SIZE, 2 * SIZE), Image.NEAREST)  # a layer of another size
    mask = studio.mask_from_layers([Image.new("RGBA", (4 * SIZE, 4 * SIZE)), half])
    assert (mask == 0).sum() == 8 * 8 and not mask[20:28, 30:38].any()
    editor = {"background": None, "layers": [Image.fromarray(everything, "RGBA")], "composite": None}
    with pytest.raises(gr.Error, match="the painted region covers the whole photo"):
        fns["restore"](editor, source, "inpaint", ["ddnm"], 3, 0.05, 0, 1, False)
    run = dict(sigma_y=0.05, seed=0)
    for methods, changed, message in [
        (["tv"], {"steps": 10 ** 15}, f"at most {APP_MAX_TV_STEPS} iterations of tv"),  # years of iterations
        (["dps"], {"steps": 10 ** 30}, "at most the prior's T = 1000"),
        (["dps"], {"steps": 3, "samples": 0}, "samples must be a whole number from 1 to 16, got 0"),
    ]:
        with pytest.raises(AppError, match=message):
            studio.restore(source, None, "denoise", methods, **(run | changed))


def request(app, api, *values, source=None):
    """What the app answers an API client's request of `api` with `values` (the state `source` left out, as the
    client does), run in process as the server runs it: Gradio reads the values, the app's function runs."""
    from gradio.state_holder import SessionState
    fn = next(fn for fn in app.fns.values() if fn.api_name == api)
    state, values = SessionState(app), list(values)
    for i, block in enumerate(fn.inputs):
        if block.stateful:
            state[block._id] = source
            values.insert(i, None)
    return asyncio.run(app.process_api(fn, values, state))


def test_an_api_clients_values_of_the_wrong_kind_get_the_apps_message_without_a_traceback(tmp_path, monkeypatch):
    """Gradio reads each value, and the app checks it: the client hears what is wrong (not Gradio's validation
    text), and the server's console shows no traceback."""
    import gradio as gr
    from diffprior.commands.serve import Studio, build_app
    (tmp_path / "app").mkdir()
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    app = build_app(studio)
    source = studio.draw(0)
    wide = studio.source_from_upload(_save(Image.new("RGB", (96, 64)), tmp_path / "app" / "wide.png"))
    monkeypatch.setattr("diffprior.commands.serve.solve", lambda *a, **k: pytest.fail("a method ran"))

    def restore(**changed):
        values = dict(editor={"background": None, "layers": [], "composite": None}, task="box-inpaint",
                      methods=["dps"], steps=3, sigma_y=0.05, seed=0, samples=1, measured=False) | changed
        return request(app, "restore", *values.values(), source=source)
    for call, message in [
        (lambda: restore(steps="abc"), "steps must be a whole number, got 'abc'"),
        (lambda: restore(steps=[3]), "steps must be a whole number, got [3]"),
        (lambda: restore(sigma_y="x"), "sigma_y must be a number from 0 to 10, got 'x'"),
        (lambda: restore(samples=None), "samples must be a whole number, got None"),
        (lambda: restore(methods=None), "pick at least one method"),
        (lambda: restore(methods="dps"), "methods must be a list of method names, got 'dps'"),
        (lambda: restore(methods=[1]), "methods must be a list of method names, got [1]"),
        (lambda: restore(task="foo"), "unknown task 'foo'; choose one of box-inpaint"),
        (lambda: restore(task=["inpaint"]), "unknown task ['inpaint']"),
        (lambda: restore(editor="layers"), "malformed request: send the values"),
        (lambda: request(app, "square", "a", 50, 100, source=wide), "across must be a number from 0 to 100"),
        (lambda: request(app, "draw", "x"), "seed must be a whole number, got 'x'"),
        (lambda: request(app, "upload", "/etc/passwd"), "malformed request: send the values"),  # not a file's form
    ]:
        with pytest.raises(gr.Error, match=re.escape(message)) as e:
            call()
        assert not e.value.print_exception  # the client's message, no traceback on the server's console


def test_a_seed_or_a_count_that_is_no_whole_number_is_refused_not_rounded(tmp_path, monkeypatch):
    """As by the command line: the seed's field (precision 0) would round 1.5 to 2, and true is no number."""
    import gradio as gr
    from diffprior.commands.serve import Studio, build_app
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    app = build_app(studio)
    source = studio.draw(0)
    monkeypatch.setattr("diffprior.commands.serve.solve", lambda *a, **k: pytest.fail("a method ran"))
    monkeypatch.setattr(studio, "draw", lambda seed: pytest.fail(f"drew with seed {seed}"))
    editor = {"background": None, "layers": [], "composite": None}
    for call, message in [
        (lambda: request(app, "restore", editor, "denoise", ["dps"], 3, 0.05, 1.5, 1, False, source=source),
         "seed must be a whole number from 0 to 9223372036854775807, got 1.5"),  # as the CLI's --seed 1.5
        (lambda: request(app, "restore", editor, "denoise", ["dps"], 3, 0.05, True, 1, False, source=source),
         "seed must be a whole number, got True"),
        (lambda: request(app, "restore", editor, "denoise", ["dps"], True, 0.05, 0, 1, False, source=source),
         "steps must be a whole number, got True"),  # not 1 step
        (lambda: request(app, "draw", 1.5), "seed must be a whole number from 0 to 9223372036854775807, got 1.5"),
        (lambda: request(app, "draw", True), "seed must be a whole number, got True"),
    ]:
        with pytest.raises(gr.Error, match=re.escape(message)):
            call()


def test_strokes_thinner_than_a_pixel_of_the_model_are_named(tmp_path):
    """A stroke that paints no quarter of any model pixel is no missing pixel: the painter hears why, rather than
    being asked to paint (as when nothing was painted)."""
    import gradio as gr
    from diffprior.commands.serve import Studio, build_app
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    fns = {fn.api_name: fn.fn for fn in build_app(studio).fns.values()}
    source = studio.draw(0)
    for side in (4 * SIZE, 32 * SIZE):  # the page's canvas; a layer so large that a dot is no shade of a model pixel
        dot = Image.new("RGBA", (side, side))
        dot.putpixel((side // 2, side // 3), (255, 0, 255, 255))
        editor = {"background": None, "layers": [dot], "composite": None}
        with pytest.raises(gr.Error, match="your strokes are thinner than one pixel of the 64x64 model and vanish: "
                                           "paint thicker"):
            fns["restore"](editor, source, "inpaint", ["ddnm"], 3, 0.05, 0, 1, False)
    editor = {"background": None, "layers": [Image.new("RGBA", (4 * SIZE, 4 * SIZE))], "composite": None}
    with pytest.raises(gr.Error, match="paint the missing region on the photo with the brush first"):
        fns["restore"](editor, source, "inpaint", ["ddnm"], 3, 0.05, 0, 1, False)


def test_the_command_for_a_photo_named_like_an_option(tmp_path):
    from diffprior.commands.serve import Studio
    studio = Studio("gmm-demo", torch.device("cpu"), tmp_path / "app")
    command = studio.command("inpaint", "ddnm", steps=3, sigma_y=0.05, seed=0, samples=1, measured=False,
                             out="restored_ddnm_full.png", full_size_of="-photo.png")
    args = build_parser().parse_args(shlex.split(command)[1:])  # not "--input: expected one argument"
    assert Path(args.input) == Path("-photo.png") and args.full_size


def _save(im: Image.Image, path: Path) -> Path:
    im.save(path)
    return path


def test_one_job_on_the_model_at_a_time(tmp_path):
    """Drawing and restoring share one queue slot (for every user): the second job waits for the first."""
    from diffprior.commands.serve import Studio, build_app
    app = build_app(Studio("gmm-demo", torch.device("cpu"), tmp_path))
    jobs = {fn.api_name: fn for fn in app.fns.values()}
    assert {jobs[name].concurrency_limit for name in ("draw", "restore")} == {1}
    assert jobs["draw"].concurrency_id == jobs["restore"].concurrency_id
