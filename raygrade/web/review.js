// raygrade's review page: the review queue of one job, the student's pages beside the model's
// grade, and a teacher's score by click or keyboard. Every call goes to this app's HTTP API with
// the key from sessionStorage (this tab only). Student text and model feedback are untrusted:
// they are only ever set as textContent.
"use strict";

const KEY = "raygrade.apiKey";
const base = location.pathname.replace(/\/review\/?$/, "");
const $ = (id) => document.getElementById(id);
const state = { items: [], index: -1, grid: [], objectUrls: [], groups: false, load: 0 };

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const response = await fetch(base + path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = new Error(body && body.error ? body.error.message : "HTTP " + response.status);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function getJson(path) { return (await api(path)).json(); }

function fmt(x) { return Number.isInteger(x) ? String(x) : String(Math.round(x * 1000) / 1000); }

function gridOf(item) {
  const out = [];
  if (item.score_step) {
    const n = Math.round(item.max_score / item.score_step);
    for (let i = 0; i <= n; i++) out.push(Math.round(i * item.score_step * 1e6) / 1e6);
    if (out[out.length - 1] < item.max_score) out.push(item.max_score);
  } else {
    for (let s = 0; s <= item.max_score; s++) out.push(s);
    if (out[out.length - 1] < item.max_score) out.push(item.max_score);
  }
  return out;
}

async function login(event) {
  if (event) event.preventDefault();
  const typed = $("api-key").value.trim();
  if (event) sessionStorage.setItem(KEY, typed);
  $("login-error").textContent = "";
  let jobs;
  try {
    jobs = await getJson("/v1/jobs?limit=100");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = error.status === 401 ? "That key was not accepted." : error.message;
    $("login").hidden = false;
    return;
  }
  $("login").hidden = true;
  for (const id of ["job-picker", "filter-picker", "logout"]) $(id).hidden = false;
  const select = $("job");
  select.replaceChildren();
  for (const job of jobs.data) {
    const option = document.createElement("option");
    option.value = job.id;
    const flagged = job.progress.items_needs_review;
    option.textContent = `${job.id.slice(0, 12)}… · ${job.state} · ${flagged} flagged`;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search).get("job");
  if (wanted && jobs.data.some((j) => j.id === wanted)) select.value = wanted;
  $("workspace").hidden = false;
  await loadQueue();
}

async function loadQueue(after = null) {
  // Loads can overlap (the job or filter changes while one runs): only the newest one is shown.
  // `after`: show the next pending entry after that index (a reload after a review), else the first.
  const load = ++state.load;
  const jobId = $("job").value;
  const status = $("filter").value;
  const groups = status === "groups";
  const items = [];
  if (jobId && groups) {
    // Every question's answers in groups (the job's results name its questions).
    const results = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}/results`);
    for (const q of [...new Set(results.results.map((r) => r.question_id))]) {
      const page = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}/questions/${encodeURIComponent(q)}/groups`);
      items.push(...page.data);
    }
  } else if (jobId) {
    let after = null;
    do {  // every page of the job's queue (a page holds up to 200 items)
      const query = new URLSearchParams({ job_id: jobId, limit: "200" });
      if (status) query.set("status", status);
      if (after) query.set("after", after);
      const page = await getJson("/v1/reviews?" + query);
      items.push(...page.data);
      after = page.has_more ? page.last_id : null;
    } while (after);
  }
  if (load !== state.load) return;
  // The entry shown now stays shown when the new list has it (the reviewer may have clicked it
  // while this load ran); after a review, the next pending one; else the first pending one.
  const current = state.items[state.index];
  const kept = after === null && current && state.groups === groups
    ? items.findIndex((i) => i.id === current.id) : -1;
  state.items = items;
  state.groups = groups;
  state.index = -1;
  renderList();
  $("empty").hidden = state.items.length > 0;
  await show(kept >= 0 ? kept : after === null ? state.items.findIndex((i) => i.status === "pending")
    : nextPending(Math.min(after, state.items.length - 1)));
}

function renderList() {
  const list = $("items");
  list.replaceChildren();
  state.items.forEach((item, i) => {
    const li = document.createElement("li");
    li.dataset.index = String(i);
    li.className = (item.status === "done" ? "done" : "") + (i === state.index ? " current" : "");
    const label = document.createElement("span");
    const score = document.createElement("span");
    score.className = "score";
    if (state.groups) {
      label.textContent = `${item.question_id} · ${item.size} answer${item.size === 1 ? "" : "s"}`;
      score.textContent = [...new Set(item.scores.map(fmt))].join("/");
    } else {
      label.textContent = `${item.student_id} · ${item.question_id}`;
      score.textContent = fmt(item.score);
    }
    li.append(label, score);
    li.addEventListener("click", () => show(i));
    list.append(li);
  });
  const done = state.items.filter((i) => i.status === "done").length;
  const noun = state.groups ? "groups" : "reviewed";
  $("progress").textContent = state.items.length ? `${done} / ${state.items.length} ${noun}` : "";
}

async function show(index) {
  if (index < 0) index = state.items.length ? 0 : -1;
  state.index = index;
  renderList();
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  $("item").hidden = index < 0;
  if (index < 0) return;
  const item = state.items[index];
  if (state.groups) return showGroup(item);
  $("members").hidden = true;
  $("student").textContent = item.student_id;
  $("question").textContent = item.question_id;
  $("model-score").textContent = fmt(item.model_score);
  $("max-score").textContent = fmt(item.max_score);
  $("confidence").textContent = item.confidence.toFixed(2);
  $("feedback").textContent = item.feedback;
  $("transcription").textContent = item.transcription ? "Read as: " + item.transcription : "";
  $("comment").value = item.review && item.review.comment ? item.review.comment : "";
  $("reviewed").textContent = item.review
    ? `Reviewed: ${fmt(item.review.score)} (${new Date(item.review.reviewed_at * 1000).toLocaleString()})` : "";
  $("item-error").textContent = "";
  renderGrid(item, item.model_score, item.review ? item.review.score : null);
  const pages = $("pages");
  pages.replaceChildren();
  for (const url of item.page_urls) {
    const response = await api(url);  // paths below the app's route prefix, as the API gives them
    const image = (response.headers.get("content-type") || "").startsWith("image/");
    const body = image ? await response.blob() : await response.text();
    if (state.items[state.index] !== item) return;  // moved on while the page loaded
    if (image) {
      const objectUrl = URL.createObjectURL(body);
      state.objectUrls.push(objectUrl);
      const img = document.createElement("img");
      img.alt = `page of ${item.student_id}`;
      img.src = objectUrl;
      pages.append(img);
    } else {
      const pre = document.createElement("pre");
      pre.textContent = body;
      pages.append(pre);
    }
  }
}

function nextPending(at) {
  // The next item (or group) to review after `at`, from the top again after the last; `at` if none.
  const n = state.items.length;
  for (let step = 1; step <= n; step++) {
    const k = (at + step) % n;
    if (state.items[k].status === "pending") return k;
  }
  return at;
}

function renderGrid(item, model, chosen) {
  state.grid = gridOf(item);
  const grid = $("grid");
  grid.replaceChildren();
  state.grid.forEach((score, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.score = String(score);
    button.textContent = fmt(score);
    if (i < 10) {
      const hint = document.createElement("kbd");
      hint.textContent = String(i);
      button.append(hint);
    }
    if (score === model) button.classList.add("model");
    if (score === chosen) button.classList.add("chosen");
    button.addEventListener("click", () => review(score));
    grid.append(button);
  });
}

function showGroup(group) {
  // A group: its answers' text, one score for every member not reviewed yet.
  $("student").textContent = `${group.size} answer${group.size === 1 ? "" : "s"}`;
  $("question").textContent = group.question_id;
  const common = [...new Set(group.scores)];
  $("model-score").textContent = common.map(fmt).join("/");
  $("max-score").textContent = fmt(group.max_score);
  $("confidence").textContent = group.mean_confidence.toFixed(2);
  $("feedback").textContent = group.reviewed ? `${group.reviewed} of ${group.size} reviewed` : "";
  $("transcription").textContent = "";
  $("comment").value = "";
  $("reviewed").textContent = "";
  $("item-error").textContent = "";
  renderGrid(group, common.length === 1 ? common[0] : null, null);
  const members = $("members");
  members.replaceChildren();
  group.student_ids.forEach((student, k) => {
    const li = document.createElement("li");
    li.textContent = `${student}: ${fmt(group.scores[k])}`;
    members.append(li);
  });
  members.hidden = false;
  const pre = document.createElement("pre");
  pre.textContent = group.sample || "(no text: read as page images)";
  $("pages").replaceChildren(pre);
}

async function reviewGroup(group, score) {
  const comment = $("comment").value.trim() || null;
  const path = `/v1/jobs/${encodeURIComponent(group.job_id)}/questions/${encodeURIComponent(group.question_id)}`
    + `/groups/${group.id}/review`;
  try {
    await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ score, comment }) });
  } catch (error) {
    $("item-error").textContent = error.message;
    return;
  }
  await loadQueue(state.index);
}

async function review(score) {
  const item = state.items[state.index];
  if (!item) return;
  if (state.groups) return reviewGroup(item, score);
  const comment = $("comment").value.trim() || null;
  try {
    const response = await api(`/v1/jobs/${encodeURIComponent(item.job_id)}/items/${item.id}/review`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ score, comment }),
    });
    state.items[state.index] = await response.json();
  } catch (error) {
    $("item-error").textContent = error.message;
    return;
  }
  await show(nextPending(state.index));
}

function onKey(event) {
  if ($("workspace").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(event.target.tagName);
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const item = state.items[state.index];
  if (/^[0-9]$/.test(event.key) && item && Number(event.key) < state.grid.length) {
    event.preventDefault();
    review(state.grid[Number(event.key)]);
  } else if (event.key === "Enter" && item && !state.groups) {
    event.preventDefault();
    review(item.model_score);
  } else if (event.key === "j" || event.key === "ArrowDown") {
    event.preventDefault();
    if (state.index + 1 < state.items.length) show(state.index + 1);
  } else if (event.key === "k" || event.key === "ArrowUp") {
    event.preventDefault();
    if (state.index > 0) show(state.index - 1);
  } else if (event.key === "c") {
    event.preventDefault();
    $("comment").focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("job").addEventListener("change", () => loadQueue());
  $("filter").addEventListener("change", () => loadQueue());
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
  document.addEventListener("keydown", onKey);
  if (sessionStorage.getItem(KEY) !== null) login(null);
});
