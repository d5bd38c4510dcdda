"""The rating page of human feedback, driven in a real headless Chromium through Selenium.

The system's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver``) are used by path, with Selenium's telemetry off and every host name mapped
to nothing but 127.0.0.1, so nothing downloads a driver or reaches another address. One browser
serves the whole module (a second one only for the two-raters test). Without Chromium the tests
skip, except where ``ADAPTIVERL_REQUIRE_BROWSER=1`` (CI, set by ``.ci/run``): there they fail.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from adaptiverl.rewards.human import HumanFeedbackReward, append_jsonl
from adaptiverl.rewards.rating import MAX_BODY, TOKEN_HEADER, RatingServer

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The picture in docs/rewards.md: ADAPTIVERL_SCREENSHOT_DIR=docs pytest tests/test_rating_page.py
SCREENSHOT_DIR_ENV = "ADAPTIVERL_SCREENSHOT_DIR"
XSS = ['<script>window.__xss = 1</script>', '<img src="x" onerror="window.__xss = 2">',
       '<b onmouseover="window.__xss = 3">bold?</b> & "quotes"']


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def new_browser():
    missing = _missing()
    if missing:
        if os.environ.get("ADAPTIVERL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here: {missing}")
        pytest.skip(missing)
    os.environ["SE_AVOID_STATS"] = "true"  # no Selenium telemetry
    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager"  # were it called, the test would fail
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                "--disable-extensions", "--disable-features=Translate,OptimizationHints,MediaRouter",
                "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--window-size=1000,900"):
        options.add_argument(arg)
    # Both paths given: Selenium Manager has nothing to look up or download.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = new_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def second_browser():
    driver = new_browser()
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def current(driver) -> tuple[str, str] | None:
    """``(id, completion)`` of the sample shown large, or None when none is waiting."""
    return driver.execute_script(
        "const c = document.getElementById('current');"
        "return c.hidden ? null : [c.dataset.id, document.getElementById('cur-completion').textContent];")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def settled(driver) -> int:
    """How many answers the page has sent and heard back about."""
    return driver.execute_script("return Number(document.getElementById('status').dataset.n || 0)")


def rate(driver, how: str, answers: Path) -> str:
    """Rate the sample shown large (``how`` a button id or a key); return the id the page saved
    once it says "saved", checking that the answer is on disk by then."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: current(driver), what="a sample on the page")
    before = settled(driver)
    if how in ("good", "bad", "skip"):
        driver.find_element(By.ID, how).click()
    else:
        driver.find_element(By.TAG_NAME, "body").send_keys(how)
    wait_for(lambda: settled(driver) > before, what="the answer to settle")
    status = driver.find_element(By.ID, "status")
    assert status.get_attribute("class") == "saved", status.text
    sample_id = status.get_attribute("data-id")
    assert sample_id in [a["id"] for a in lines(answers)]  # fsynced before the page said "saved"
    return sample_id


def call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def queue_requests(queue: Path, completions: list[str], timeout: float = 600.0) -> list[str]:
    now = time.time()
    ids = [f"hand-{len(lines(queue / 'requests.jsonl')) + j}" for j in range(len(completions))]
    append_jsonl(queue / "requests.jsonl", [{"id": i, "step": 7, "prompt": "Say something", "completion": c,
                                            "time": now, "deadline": now + timeout}
                                           for i, c in zip(ids, completions, strict=True)])
    return ids


def test_rate_by_click_and_keyboard_reaches_answers_log_and_reward(browser, tmp_path):
    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    shown = io.StringIO()
    reward = HumanFeedbackReward(mode="web", queue_dir=queue, log_path=log, timeout=60, poll_interval=0.05,
                                 output=shown)
    server = reward.start_server()
    assert f"rate the samples at {server.url}" in shown.getvalue()
    assert server.url.startswith("http://127.0.0.1:") and "token" not in server.url  # loopback: no token
    browser.get(server.url)
    wait_for(lambda: "No sample is waiting" in text(browser, "empty"), what="the empty page")
    result = {}
    trainer = threading.Thread(target=lambda: result.update(out=reward(
        prompts=["Write a greeting"] * 4, completions=["hello there", "hi", "greetings, friend", "yo"])))
    trainer.start()  # the batch arrives while the page is open: no reload
    try:
        wait_for(lambda: current(browser), what="the batch on the page")
        assert text(browser, "cur-prompt") == "Write a greeting" and text(browser, "n-pending") == "4"
        assert text(browser, "cur-step") == "step 0" and text(browser, "cur-left").endswith("s left")
        shown_first = current(browser)[0]
        rated = [rate(browser, "good", queue / "answers.jsonl"),   # a click
                 rate(browser, "-", queue / "answers.jsonl")]      # a key
        wait_for(lambda: text(browser, "n-pending") == "2" and "+1: 1 · −1: 1" in text(browser, "counts"),
                 what="the page to catch up")
        shot = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path) / "rating_page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        rated += [rate(browser, "s", queue / "answers.jsonl"), rate(browser, "bad", queue / "answers.jsonl")]
        trainer.join(timeout=30)
        counts = wait_for(lambda: "+1: 1 · −1: 2 · skipped: 1" in text(browser, "counts")
                          and text(browser, "counts"), what="the counts")
        assert "mean reward -0.33" in counts and "answers saved: 4" in counts
        assert "No sample is waiting" in text(browser, "empty")
    finally:
        reward.close()
    assert result["out"] == [1.0, -1.0, None, -1.0]  # the reward the trainer returns
    assert rated[0] == shown_first and len(set(rated)) == 4  # it moved on by itself after each answer
    assert [(a["rating"], a["via"]) for a in lines(queue / "answers.jsonl")] == [
        (1, "web"), (-1, "web"), ("skip", "web"), (-1, "web")]
    assert [(r["completion"], r["rating"], r["outcome"]) for r in lines(log)] == [
        ("hello there", 1.0, "rated"), ("hi", -1.0, "rated"), ("greetings, friend", None, "skipped"),
        ("yo", -1.0, "rated")]


def test_a_completion_with_html_renders_as_text(browser, tmp_path):
    queue = tmp_path / "queue"
    queue_requests(queue, XSS)
    server = RatingServer(queue).start()
    try:
        browser.get(server.url)
        for expected in XSS:
            wait_for(lambda expected=expected: (current(browser) or [None, None])[1] == expected,
                     what=f"the completion {expected!r} as text")
            assert browser.execute_script("return window.__xss === undefined")
            assert not browser.find_elements("css selector", "#cur-completion *")  # no element made of it
            rate(browser, "s", queue / "answers.jsonl")
        policy = urllib.request.urlopen(server.url, timeout=10).headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    finally:
        server.close()
    assert browser.execute_script("return window.__xss === undefined")


def test_web_mode_takes_its_token_from_the_environment_only(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'RATING_TOKEN', which is not set"):
        HumanFeedbackReward(mode="web", log_path=tmp_path / "log.jsonl", token_env="RATING_TOKEN")
    monkeypatch.setenv("RATING_TOKEN", "s3cret-from-the-environment")
    shown = io.StringIO()
    reward = HumanFeedbackReward(mode="web", log_path=tmp_path / "log.jsonl", host="0.0.0.0",
                                 token_env="RATING_TOKEN", output=shown)
    try:
        assert reward.start_server().token == "s3cret-from-the-environment"
        assert shown.getvalue().count("#token=s3cret-from-the-environment") == 1  # printed once
        assert reward.queue_dir == tmp_path / "human_queue"
    finally:
        reward.close()


def test_bound_elsewhere_a_token_is_required_for_every_call(browser, tmp_path, caplog):
    queue = tmp_path / "queue"
    ids = queue_requests(queue, ["one", "two"])
    server = RatingServer(queue, host="0.0.0.0").start()
    base = f"http://127.0.0.1:{server.port}/"
    answer = json.dumps({"id": ids[0], "rating": 1}).encode()
    as_json = {"Content-Type": "application/json"}
    try:
        assert server.token and len(server.token) >= 32 and server.url.endswith(f"#token={server.token}")
        assert call(base + "api/state")[0] == 401
        assert call(base + "api/state", headers={TOKEN_HEADER: "guess"})[0] == 401
        assert call(base + f"api/state?token={server.token}")[0] == 401  # only the header counts
        assert call(base + "api/answer", answer, as_json)[0] == 401
        assert call(base + "api/answer", answer, {**as_json, TOKEN_HEADER: server.token[:-1]})[0] == 401
        assert not (queue / "answers.jsonl").exists()
        good = {**as_json, TOKEN_HEADER: server.token}
        assert call(base + "api/answer", json.dumps({"id": "nobody", "rating": 1}).encode(), good)[0] == 404
        assert call(base + "api/answer", json.dumps({"id": ids[0], "rating": 5}).encode(), good)[0] == 400
        assert call(base + "api/answer", b'{"id": "' + b"x" * MAX_BODY + b'"}', good)[0] == 413
        assert call(base + "api/answer", answer, {TOKEN_HEADER: server.token,
                                                  "Content-Type": "text/plain"})[0] == 415
        assert call(base + "api/state", headers={TOKEN_HEADER: server.token})[0] == 200
        late = queue_requests(queue, ["too late"], timeout=-1.0)[0]  # the trainer gave up on it
        assert call(base + "api/answer", json.dumps({"id": late, "rating": 1}).encode(), good)[0] == 410
        assert not (queue / "answers.jsonl").exists()
        # The browser, given the printed URL, keeps the token for its tab and out of the address bar.
        browser.get(f"http://127.0.0.1:{server.port}/#token={server.token}")
        first = rate(browser, "+", queue / "answers.jsonl")
        assert "token" not in browser.current_url
    finally:
        server.close()
    assert lines(queue / "answers.jsonl") and [a["id"] for a in lines(queue / "answers.jsonl")] == [first]
    assert server.token not in caplog.text  # no request line or error logged it


def test_loopback_refuses_a_foreign_host_name(tmp_path):
    queue = tmp_path / "queue"
    queue_requests(queue, ["x"])
    server = RatingServer(queue).start()
    try:
        status, body = call(f"http://127.0.0.1:{server.port}/api/state", headers={"Host": "evil.example"})
        assert status == 403 and "Host" in body["error"]
        assert call(f"http://localhost:{server.port}/api/state")[0] == 200
    finally:
        server.close()


def test_two_raters_at_once_lose_nothing(browser, second_browser, tmp_path):
    from selenium.webdriver.common.by import By

    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="web", queue_dir=queue, log_path=log, timeout=60, poll_interval=0.05,
                                 output=io.StringIO())
    server = reward.start_server()
    result, saved = {}, {"ann": [], "bob": []}
    trainer = threading.Thread(target=lambda: result.update(out=reward(completions=[f"c{j}" for j in range(8)])))
    trainer.start()
    pages = {"ann": browser, "bob": second_browser}
    for name, driver in pages.items():
        driver.get(server.url)
        field = driver.find_element(By.ID, "rater")
        field.clear()
        field.send_keys(name)
        driver.find_element(By.TAG_NAME, "h1").click()  # leave the field: the name is kept

    def rater(name: str, key: str) -> None:
        driver = pages[name]
        while trainer.is_alive() and current(driver):
            try:
                saved[name].append(rate(driver, key, queue / "answers.jsonl"))
            except AssertionError:  # the other rater took the last one meanwhile
                if current(driver) and trainer.is_alive():
                    raise

    threads = [threading.Thread(target=rater, args=("ann", "g")), threading.Thread(target=rater, args=("bob", "b"))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        trainer.join(timeout=30)
    finally:
        reward.close()
    answers = lines(queue / "answers.jsonl")
    # Every answer a page called saved is in the file, with its rater; none other is.
    assert sorted((a["rater"], a["id"]) for a in answers) == sorted(
        (name, i) for name, ids in saved.items() for i in ids)
    assert saved["ann"] and saved["bob"]
    # The trainer's rewards follow the rule: the first answer in the file counts.
    first = {}
    for a in answers:
        first.setdefault(a["id"], a)
    ids = [r["id"] for r in lines(queue / "requests.jsonl")]
    assert result["out"] == [float(first[i]["rating"]) for i in ids]
    assert [(r["id"], r["rater"]) for r in sorted(lines(log), key=lambda r: r["sample"])] == [
        (i, first[i]["rater"]) for i in ids]


def test_grpo_training_with_a_browser_rater(browser, tiny_gpt2_dir, tmp_path):
    """A short GRPO run with mode="web": the rater reads each completion on the page and rates
    it +1 when its length is even, -1 otherwise; the logged rewards are exactly those ratings."""
    from datasets import Dataset
    from selenium.webdriver.common.by import By
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    queue, log = tmp_path / "queue", tmp_path / "ratings.jsonl"
    reward = HumanFeedbackReward(mode="web", queue_dir=queue, log_path=log, timeout=60, poll_interval=0.05,
                                 output=io.StringIO())
    url = reward.start_server().url
    browser.get(url)
    stop, seen = threading.Event(), {}

    def browser_rater() -> None:
        while not stop.is_set():
            shown = current(browser)
            if not shown:
                time.sleep(0.05)
                continue
            sample_id, completion = shown
            seen[sample_id] = completion
            before = settled(browser)
            browser.find_element(By.TAG_NAME, "body").send_keys("g" if len(completion) % 2 == 0 else "b")
            wait_for(lambda before=before: settled(browser) > before, what="the answer to settle")

    thread = threading.Thread(target=browser_rater, daemon=True)
    thread.start()
    dataset = Dataset.from_list([{"prompt": p} for p in ("The module provides", "Return the value of",
                                                         "This class implements", "Create a new")])
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], max_steps=2, logging_steps=1,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
                      learning_rate=1e-4, save_strategy="no", seed=0, bf16=False, fp16=False)
    try:
        trainer = GRPOTrainer(model=tiny_gpt2_dir, args=args, train_dataset=dataset, reward_funcs=[reward],
                              processing_class=AutoTokenizer.from_pretrained(tiny_gpt2_dir))
        trainer.train()
    finally:
        stop.set()
        thread.join(timeout=30)
        reward.close()
    ratings = lines(log)
    assert ratings and all(r["outcome"] == "rated" for r in ratings)  # the browser answered every sample
    for r in ratings:
        assert seen[r["id"]] == r["completion"]  # the page showed exactly the completion
        assert r["rating"] == (1.0 if len(r["completion"]) % 2 == 0 else -1.0)
    logged = [row["rewards/human/mean"] for row in trainer.state.log_history if "rewards/human/mean" in row]
    by_call: dict[str, list[float]] = {}
    for r in ratings:
        by_call.setdefault(r["id"].rsplit("-", 1)[0], []).append(r["rating"])
    expected = [sum(v) / len(v) for v in by_call.values()]
    assert len(logged) == 2 and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(logged, expected, strict=False))


def test_rate_command_serves_the_queue(tmp_path, capsys):
    """``adaptiverl rate``: the URL printed, the page and the state served, Ctrl-C stops it."""
    import signal
    import subprocess
    import sys

    queue = tmp_path / "queue"
    queue_requests(queue, ["from the command"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Ctrl-C reaches a foreground command whose SIGINT is at its default. A job a shell starts in the
    # background (a CI run launched with `&`) ignores SIGINT, exec keeps that, and Python then
    # installs no KeyboardInterrupt: the child would ignore the test's Ctrl-C (seen once in CI)
    child = subprocess.Popen([sys.executable, "-m", "adaptiverl.cli", "rate", str(queue), "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = child.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and str(queue.resolve()) in line
        status, state = call(url + "api/state")
        assert status == 200 and [s["completion"] for s in state["pending"]] == ["from the command"]
    finally:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    from adaptiverl.cli import main

    assert main(["rate", str(queue), "--host", "203.0.113.9"]) == 2  # not an address of this machine
    assert "cannot serve the rating page on 203.0.113.9:8765" in capsys.readouterr().err
