"""The web demo and the evaluation gallery in a real browser (headless Debian Chromium via Selenium).

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium and chromium-driver; .ci/run
installs them). Without them these tests are skipped, unless CAPTIONER_REQUIRE_BROWSER=1 (CI) makes that a
failure.
"""

import os

import httpx
import pytest
from PIL import Image

from captioner.serve.browser import browser_available, chromium, running_server
from conftest import untrained_model_file

if not browser_available():
    if os.environ.get("CAPTIONER_REQUIRE_BROWSER") == "1":
        raise RuntimeError("CAPTIONER_REQUIRE_BROWSER=1 but chromium/chromedriver are missing "
                           "(apt-get install chromium chromium-driver)")
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`captioner serve` as a user starts it, with a soft-attention and a NIC model."""
    root = tmp_path_factory.mktemp("serve")
    soft = untrained_model_file(root / "soft.pt", "soft")
    nic = untrained_model_file(root / "nic.pt", "nic")
    with running_server([f"soft={soft}", f"nic={nic}"]) as url:
        yield url


def wait(driver, seconds=60):
    return WebDriverWait(driver, seconds)


def canvas_pixels(driver) -> str:
    return driver.execute_script("return document.getElementById('canvas').toDataURL()")


def test_upload_a_photo_read_the_caption_and_hover_a_word(browser, server, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (30, 120, 220)).save(photo)
    browser.get(server)
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    Select(browser.find_element(By.ID, "beam")).select_by_value("3")
    browser.find_element(By.ID, "go").click()
    caption = wait(browser).until(ec.visibility_of_element_located((By.ID, "caption")))
    wait(browser).until(lambda d: caption.text.strip())
    with photo.open("rb") as f:  # the page shows what the API answers for the same photo and settings
        api = httpx.post(f"{server}/api/caption", files={"file": ("photo.png", f, "image/png")},
                         data={"model": "soft", "beam_size": "3"}, timeout=60).json()
    assert caption.text == api["caption"]
    words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
    assert [w.text for w in words] == api["tokens"]
    before = canvas_pixels(browser)
    ActionChains(browser).move_to_element(words[0]).perform()
    wait(browser).until(lambda d: "active" in words[0].get_attribute("class"))
    assert canvas_pixels(browser) != before  # the attention overlay was drawn over the photo
    assert "where the model looked" in browser.find_element(By.ID, "hint").text


def test_sample_with_nic_says_there_is_no_attention(browser, server):
    browser.get(server)
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "sample")).options) > 1)
    Select(browser.find_element(By.ID, "sample")).select_by_value("cat.jpg")
    Select(browser.find_element(By.ID, "model")).select_by_value("nic")
    own = Select(browser.find_element(By.ID, "beam")).first_selected_option.text  # "model's own (N)"
    assert own.startswith("model's own (")
    browser.find_element(By.ID, "go").click()
    hint = wait(browser).until(ec.visibility_of_element_located((By.ID, "hint")))
    wait(browser).until(lambda d: "no attention map" in hint.text)
    assert browser.find_element(By.ID, "caption").text.strip()
    beam = own.removeprefix("model's own (").removesuffix(")")
    assert f"beam {beam} " in browser.find_element(By.ID, "meta").text  # the model's own beam size was used


def test_a_bad_upload_shows_the_error_on_the_page(browser, server, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not a photo</html>")
    browser.get(server)
    wait(browser).until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    browser.find_element(By.ID, "file").send_keys(str(fake))
    browser.find_element(By.ID, "go").click()
    error = wait(browser).until(ec.visibility_of_element_located((By.ID, "error")))
    assert "fake.jpg" in error.text and "not an image" in error.text


def test_evaluation_gallery_renders_and_sorts(browser, tmp_path):
    from captioner.viz.report import write_report

    images = {}
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        images[f"img{i}.png"] = tmp_path / f"img{i}.png"
        Image.new("RGB", (160, 90 + 40 * i), colour).save(images[f"img{i}.png"])
    scores = [(0.30, 1.2), (0.05, 0.1), (0.60, 2.5)]  # (BLEU-4, CIDEr-D) per image
    report = {"data": "test", "split": "test", "images": 3, "beam_size": 5,
              "metrics": {"BLEU-4": 0.31, "CIDEr-D": 1.26},
              "captions": [{"image": name, "caption": f"caption <{i}> & more", "references": ["a ref", "b ref"],
                            "scores": {"BLEU-4": b, "CIDEr-D": c}}
                           for i, (name, (b, c)) in enumerate(zip(images, scores, strict=True))]}
    report["captions"].append({"image": "gone.png", "caption": "lost", "references": [],
                               "scores": {"BLEU-4": 0.0, "CIDEr-D": 0.0}})
    index = write_report(report, tmp_path / "gallery", images)
    browser.get(index.as_uri())
    cards = lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery .card")  # noqa: E731
    assert len(cards()) == 4
    assert [c.get_attribute("data-name") for c in cards()] == ["img2.png", "img0.png", "img1.png", "gone.png"]
    assert "caption <2> & more" in cards()[0].text  # escaped, shown as text
    loaded = browser.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded == 3  # the three readable images; the missing one has a placeholder
    Select(browser.find_element(By.ID, "sort")).select_by_value("bleu4-asc")
    assert [c.get_attribute("data-name") for c in cards()][:2] == ["gone.png", "img1.png"]
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#metrics td")]
    assert cells == ["31.0", "126.0"]
