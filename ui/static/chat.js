// deepscout chat page. Untrusted text (questions, titles, excerpts, streamed tokens) is only ever set
// as textContent; the one HTML inserted is the answer the server rendered and sanitised.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { thread: null, job: null, lastSeq: 0, abort: null };

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const token = localStorage.getItem("deepscout-token");
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.body !== undefined) });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function webUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.protocol === "http:" || parsed.protocol === "https:") return parsed.href;
  } catch (e) { /* not a URL */ }
  return null;
}

function status(text) { $("status").textContent = text; }

async function loadThreads() {
  const list = $("threads");
  list.replaceChildren();
  let threads = [];
  try { threads = await api("/v1/threads"); } catch (e) { status(e.message); return; }
  for (const thread of threads) {
    const item = el("li", thread.id === state.thread ? "active" : "");
    item.dataset.id = thread.id;
    const title = el("span", "thread-title", thread.title || "(untitled)");
    title.addEventListener("click", () => openThread(thread.id));
    const remove = el("button", "delete", "×");
    remove.type = "button";
    remove.title = "Delete this thread";
    remove.addEventListener("click", () => deleteThread(thread.id));
    item.append(title, remove);
    list.append(item);
  }
}

async function deleteThread(id) {
  try { await api("/v1/threads/" + encodeURIComponent(id), { method: "DELETE" }); } catch (e) { status(e.message); return; }
  if (state.thread === id) $("new-thread").click();
  else loadThreads();
}

function renderSources(sources) {
  const list = $("sources");
  list.replaceChildren();
  for (const source of sources || []) {
    const item = el("li");
    item.id = "source-" + source.n;
    item.value = source.n;
    const link = el("a", "title", source.title || "(untitled)");
    const excerpt = el("div", "excerpt", source.excerpt || "");
    const web = webUrl(source.url);
    if (web) {
      link.href = web;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    } else {
      // A local document: its whole text, fetched with the caller's token, shown as text in the panel.
      link.href = "#source-" + source.n;
      link.addEventListener("click", async () => {
        try {
          const stored = await api("/v1/sources/" + encodeURIComponent(source.source_id));
          excerpt.textContent = stored.text;
          excerpt.classList.add("whole");
        } catch (e) { status(e.message); }
      });
    }
    item.append(link);
    if (source.url) item.append(el("div", "url", source.url));
    item.append(excerpt);
    list.append(item);
  }
}

function addMessage(role, text, html) {
  const node = el("div", "message " + role);
  if (html !== undefined && html !== null) node.innerHTML = html; // sanitised by the server
  else node.textContent = text;
  $("conversation").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

async function openThread(id) {
  stopStreaming();
  state.thread = id;
  location.hash = "thread=" + id;
  $("conversation").replaceChildren();
  $("steps").replaceChildren();
  renderSources([]);
  let detail;
  try { detail = await api("/v1/threads/" + encodeURIComponent(id)); } catch (e) { status(e.message); return; }
  for (const message of detail.messages) {
    addMessage(message.role, message.content, message.role === "assistant" ? message.html : undefined);
    if (message.role === "assistant") renderSources(message.sources);
  }
  const running = detail.jobs.find((job) => job.status === "queued" || job.status === "running");
  if (running) follow(running, 0);
  else {
    status("");
    if (detail.jobs.length) replaySteps(detail.jobs[detail.jobs.length - 1]);
  }
  loadThreads();
}

function stepText(type, data) {
  switch (type) {
    case "queries": return "Searching: " + (data.queries || []).join("; ");
    case "search": return "Search “" + data.query + "”: " + data.hits + " results";
    case "source": return "Reading [" + data.n + "] " + data.title;
    case "reflection": return (data.queries || []).length ? "Searching further: " + data.queries.join("; ") : "Enough to answer";
    case "tokens": return data.node + ": " + data.prompt_tokens + " prompt / " + data.output_tokens + " output tokens";
    case "stop": return "Stopped: " + data.reason;
    default: return null;
  }
}

function parseFrame(frame) {
  const event = { id: 0, type: "message", data: "" };
  for (const line of frame.split("\n")) {
    if (line.startsWith("id: ")) event.id = Number(line.slice(4));
    else if (line.startsWith("event: ")) event.type = line.slice(7);
    else if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  if (!event.id) return null; // a keep-alive comment
  event.data = event.data ? JSON.parse(event.data) : {};
  return event;
}

function showStep(type, data) {
  const step = stepText(type, data);
  if (step) $("steps").append(el("li", "step " + type, step));
}

async function replaySteps(job) {
  // A finished job's stream is its stored events, then the end: show its steps again.
  const response = await fetch(job.events_url, { headers: headers(false) });
  if (!response.ok) return;
  for (const frame of (await response.text()).split("\n\n")) {
    const event = frame.trim() ? parseFrame(frame) : null;
    if (event) showStep(event.type, event.data);
  }
}

function stopStreaming() {
  if (state.abort) state.abort.abort();
  state.abort = null;
}

async function follow(job, after) {
  stopStreaming();
  state.job = job.id;
  state.lastSeq = after;
  $("stop").disabled = false;
  status("Researching…");
  let answer = null;
  let finished = false;
  while (!finished && state.job === job.id) {
    const controller = new AbortController();
    state.abort = controller;
    try {
      const response = await fetch(job.events_url, {
        headers: { ...headers(false), "Last-Event-ID": String(state.lastSeq) },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error("events: " + response.status);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          state.lastSeq = event.id || state.lastSeq;
          const data = event.data;
          showStep(event.type, data);
          if (event.type === "answer_token") {
            if (!answer) answer = addMessage("assistant", "");
            answer.textContent += data.text;
          } else if (event.type === "done") {
            if (!answer) answer = addMessage("assistant", "");
            answer.innerHTML = data.html; // sanitised by the server
            renderSources(data.sources);
            status("Done");
            finished = true;
          } else if (event.type === "failed" || event.type === "cancelled" || event.type === "interrupted") {
            status(event.type === "failed" ? "Failed: " + data.message : "Stopped (" + event.type + ")");
            finished = true;
          }
        }
      }
      if (!finished) {
        const current = await api("/v1/research/" + job.id);
        finished = !["queued", "running"].includes(current.status);
        if (finished) status(current.status);
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      status("Reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  $("stop").disabled = true;
  loadThreads();
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const body = { question, model: $("model").value, search: $("search").value };
  if (state.thread) body.thread_id = state.thread;
  let job;
  try {
    job = await api("/v1/research", { method: "POST", body: JSON.stringify(body) });
  } catch (e) { status(e.message); return; }
  $("question").value = "";
  $("steps").replaceChildren();
  if (state.thread !== job.thread_id) {
    state.thread = job.thread_id;
    location.hash = "thread=" + job.thread_id;
    $("conversation").replaceChildren();
  }
  addMessage("user", question);
  loadThreads();
  follow(job, 0);
}

async function stop() {
  if (!state.job) return;
  try { await api("/v1/research/" + state.job + "/cancel", { method: "POST" }); } catch (e) { status(e.message); }
}

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("deepscout-theme", theme);
}

document.addEventListener("DOMContentLoaded", () => {
  setTheme(localStorage.getItem("deepscout-theme") || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  $("theme").addEventListener("click", () => setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  $("composer").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  $("new-thread").addEventListener("click", () => {
    stopStreaming();
    state.thread = null;
    state.job = null;
    location.hash = "";
    $("conversation").replaceChildren();
    $("steps").replaceChildren();
    renderSources([]);
    loadThreads();
  });
  const token = $("token");
  if (token) {
    token.value = localStorage.getItem("deepscout-token") || "";
    token.addEventListener("change", () => { localStorage.setItem("deepscout-token", token.value); loadThreads(); });
  }
  const match = location.hash.match(/thread=([0-9a-f]+)/);
  if (match) openThread(match[1]);
  else loadThreads();
});
