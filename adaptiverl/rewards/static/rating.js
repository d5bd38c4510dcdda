// The rating page of adaptiverl's human feedback (served by adaptiverl/rewards/rating.py).
// Every text from the queue is set with textContent, never as HTML: completions are model output.
"use strict";
(function () {
  const TOKEN_KEY = "adaptiverl-rating-token";
  const RATER_KEY = "adaptiverl-rater";
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {  // the token comes in the URL's fragment once; keep it for this tab, out of the address bar
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const $ = (id) => document.getElementById(id);
  const rater = $("rater");
  rater.value = localStorage.getItem(RATER_KEY) || "";
  rater.addEventListener("change", () => localStorage.setItem(RATER_KEY, rater.value.trim()));

  let state = { pending: [], recent: [], counts: {}, answers: 0, now: Date.now() / 1000 };
  let clockOffset = 0;    // server time minus this browser's time, in seconds
  let currentId = null;   // the sample shown large
  const mine = new Set(); // ids this page has answered (saved), left out until the server agrees
  let busy = false;
  let answered = 0;       // answers this page has sent and heard back about

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (token) h["X-Rating-Token"] = token;
    return h;
  }

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function waiting() {
    return state.pending.filter((s) => !mine.has(s.id));
  }

  function pickCurrent() {
    const list = waiting();
    if (!list.some((s) => s.id === currentId)) currentId = list.length ? list[0].id : null;
  }

  function secondsLeft(sample) {
    if (typeof sample.deadline !== "number") return null;
    return Math.max(0, Math.round(sample.deadline - (Date.now() / 1000 + clockOffset)));
  }

  function renderCurrent() {
    const list = waiting();
    const index = list.findIndex((s) => s.id === currentId);
    $("current").hidden = index < 0;
    $("empty").hidden = index >= 0;
    if (index < 0) return;
    const sample = list[index];
    $("cur-step").textContent = "step " + sample.step;
    const left = secondsLeft(sample);
    $("cur-left").textContent = left === null ? "no time limit" : left + " s left";
    $("cur-pos").textContent = "sample " + (index + 1) + " of " + list.length + " waiting";
    $("cur-prompt").textContent = sample.prompt;
    $("cur-completion").textContent = sample.completion;
    $("current").dataset.id = sample.id;
  }

  function render() {
    pickCurrent();
    renderCurrent();
    const list = waiting();
    $("n-pending").textContent = String(list.length);
    const queue = $("queue");
    queue.replaceChildren(...list.map((s) => {
      const li = document.createElement("li");
      li.textContent = "step " + s.step + ": " + s.completion.slice(0, 120);
      li.dataset.id = s.id;
      if (s.id === currentId) li.className = "current";
      li.addEventListener("click", () => { currentId = s.id; render(); });
      return li;
    }));
    const c = state.counts;
    const mean = state.mean_reward === null || state.mean_reward === undefined
      ? "none yet" : (state.mean_reward >= 0 ? "+" : "") + state.mean_reward.toFixed(2);
    $("counts").textContent = "+1: " + (c.good || 0) + " · −1: " + (c.bad || 0) + " · skipped: " + (c.skip || 0)
      + " · timed out: " + (c.timeout || 0) + " · mean reward " + mean + " · answers saved: " + state.answers;
    const body = $("recent").tBodies[0];
    body.replaceChildren(...state.recent.map((r) => {
      const tr = document.createElement("tr");
      const reward = r.reward === null ? "none" : (r.reward > 0 ? "+1" : "−1");
      for (const [text, cls] of [[String(r.step), ""], [r.completion, "completion"], [r.outcome, ""],
                                 [reward, ""], [r.rater || "", ""]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      tr.dataset.id = r.id;
      return tr;
    }));
  }

  async function refresh() {
    try {
      const response = await fetch("api/state", { headers: headers(), cache: "no-store" });
      const body = await response.json();
      if (!response.ok) { setStatus(body.error || ("error " + response.status), "error"); return; }
      state = body;
      clockOffset = state.now - Date.now() / 1000;
      const pendingIds = new Set(state.pending.map((s) => s.id));
      for (const id of mine) if (!pendingIds.has(id)) mine.delete(id);
      render();
    } catch (err) {
      setStatus("cannot reach the rating server (" + err.message + ")", "error");
    }
  }

  async function answer(rating) {
    if (busy || currentId === null) return;
    busy = true;
    const id = currentId;
    setStatus("saving…", "");
    try {
      const response = await fetch("api/answer", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ id: id, rating: rating, rater: rater.value.trim() || null }),
      });
      const body = await response.json();
      if (!response.ok) {
        setStatus("not saved: " + (body.error || response.status), "error");
        if (response.status === 404 || response.status === 410) mine.add(id);
      } else {
        mine.add(id);
        const by = body.rater ? " by " + body.rater : "";
        setStatus(body.counted ? "saved" : "saved (an earlier answer" + by + " counts for this sample)", "saved");
        $("status").dataset.id = id;
      }
      render();
    } catch (err) {
      setStatus("not saved: " + err.message, "error");
    } finally {
      busy = false;
      answered += 1;
      $("status").dataset.n = String(answered);  // one more answer settled (saved or not)
    }
  }

  function move(step) {
    const list = waiting();
    const index = list.findIndex((s) => s.id === currentId);
    if (list.length) currentId = list[(index + step + list.length) % list.length].id;
    render();
  }

  for (const id of ["good", "bad", "skip"]) {
    const button = $(id);
    button.addEventListener("click", () => {
      const value = button.dataset.rating;
      answer(value === "skip" ? "skip" : Number(value));
    });
  }
  const KEYS = { "+": 1, "=": 1, "g": 1, "-": -1, "b": -1, "s": "skip" };
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key in KEYS) { event.preventDefault(); answer(KEYS[event.key]); }
    else if (event.key === "ArrowDown" || event.key === "j") { event.preventDefault(); move(1); }
    else if (event.key === "ArrowUp" || event.key === "k") { event.preventDefault(); move(-1); }
  });

  refresh();
  setInterval(refresh, 1000);
  setInterval(renderCurrent, 1000);
})();
