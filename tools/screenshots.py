"""The README's pictures, made with the shipped model: the demo page and a per-word attention figure.

    python tools/screenshots.py [--sample rocket.jpg] [--word 1]

Writes docs/images/demo.png (headless Chromium showing `captioner serve` with the sample captioned and one
word's attention on) and docs/images/attention.png (`captioner caption SAMPLE --out ...`'s figure).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from captioner.serve.browser import chromium, running_server

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "captioner" / "samples"
OUT = ROOT / "docs" / "images"


def demo_screenshot(sample: str, word: int, path: Path) -> str:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with tempfile.TemporaryDirectory() as profile, running_server([]) as url, \
            chromium(profile, width=1000, height=1000) as driver:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "sample")).options) > 1)
        Select(driver.find_element(By.ID, "sample")).select_by_value(sample)
        driver.find_element(By.ID, "go").click()
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        words = driver.find_elements(By.CSS_SELECTOR, "#words .word")
        ActionChains(driver).move_to_element(words[min(word, len(words) - 1)]).perform()
        driver.execute_script("document.body.style.zoom = '0.9'")
        driver.save_screenshot(str(path))
        return driver.find_element(By.ID, "caption").text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", default="rocket.jpg", help="sample photo to show (default rocket.jpg)")
    p.add_argument("--word", type=int, default=1, help="index of the word whose attention the page shows")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    caption = demo_screenshot(args.sample, args.word, OUT / "demo.png")
    print(f"{OUT / 'demo.png'}: {caption}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "captioner.cli", "caption", str(SAMPLES / args.sample),
                        "--out", tmp], check=True)
        shutil.copy(Path(tmp) / f"{Path(args.sample).stem}.attention.png", OUT / "attention.png")
    print(f"{OUT / 'attention.png'}")


if __name__ == "__main__":
    main()
