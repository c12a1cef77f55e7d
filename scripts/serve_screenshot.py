"""The README's screenshot of `diffprior serve`: draw a face from the prior, paint a stroke over it, restore
it with the default methods (DPS and DDNM) and K posterior samples, and save the page as a PNG.

    diffprior serve --port 7860 &                 # the default model, faces64 (or --model gmm-demo)
    python scripts/serve_screenshot.py http://127.0.0.1:7860/ docs/serve.png [--steps 50] [--samples 4]

Needs selenium and Debian's chromium + chromium-driver (the test extra and .ci/run install them).
"""

import argparse
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1420"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 600)
        driver.get(args.url)

        def set_number(elem_id: str, value: int) -> None:
            box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]"))
            box.clear()
            box.send_keys(str(value))

        set_number("seed", args.seed)
        driver.find_element(By.ID, "draw").click()
        wait.until(lambda d: "drawn from" in d.find_element(By.ID, "about").text)
        time.sleep(1)
        canvas = driver.find_elements(By.CSS_SELECTOR, "#photo canvas")[-1]
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, -60, -20).click_and_hold()
        for _ in range(12):
            stroke = stroke.move_by_offset(10, 2)
        stroke.release().perform()
        driver.find_element(By.XPATH, "//*[@id='task']//label[contains(., 'painted mask')]").click()
        set_number("steps", args.steps)
        set_number("samples", args.samples)
        driver.find_element(By.ID, "restore").click()
        # the download list's link, not the component's label (which names settings.json too)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#downloads a[download="settings.json"]')
                   or d.find_elements(By.CSS_SELECTOR, ".toast-body"))
        time.sleep(2)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
