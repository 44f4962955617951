// tnllm playground: submit jobs, stream their tokens, list, inspect and cancel them.
// Plain browser JavaScript (no build step, no dependency); it uses only the public HTTP API.
"use strict";

const ROOT = document.querySelector('meta[name="tnllm-root"]').content;
const KEY_STORE = "tnllm.apiKey"; // sessionStorage only: the key dies with the tab
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

const state = { jobId: null, history: [], selected: null, streamAbort: null };

// --- HTTP -------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body, text) {
    const detail = body && body.error ? body.error.message : text || "no answer";
    super(`${status}: ${detail}`);
    this.status = status;
    this.body = body;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`; // EventSource cannot send this: we stream with fetch()
  return h;
}

async function errorOf(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  return new ApiError(response.status, body, text);
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(ROOT + path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// --- Server-Sent Events over fetch() ----------------------------------------------------------
function parseEvent(block) {
  const ev = { event: "message", data: [], id: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment (the server's keep-alive ping)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") ev.event = value;
    else if (field === "data") ev.data.push(value);
    else if (field === "id") ev.id = value;
  }
  return ev.data.length ? { ...ev, data: ev.data.join("\n") } : null;
}

async function* sseEvents(path, lastId, signal) {
  const extra = { Accept: "text/event-stream" };
  if (lastId) extra["Last-Event-ID"] = lastId;
  const response = await fetch(ROOT + path, { headers: headers(extra), signal });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // Normalise CRLF, leaving a trailing CR until its LF arrives in the next chunk.
    buffer = (buffer + value).replace(/\r\n|\r(?=.)/gs, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const ev = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (ev) yield ev;
    }
  }
}

/** Follow a job's stream to its end, resuming with Last-Event-ID after a dropped connection. */
async function followJob(jobId, onText, signal) {
  let lastId = null;
  let text = "";
  for (let failures = 0; ; ) {
    try {
      for await (const ev of sseEvents(`/v1/jobs/${encodeURIComponent(jobId)}/stream`, lastId, signal)) {
        failures = 0;
        if (ev.id) lastId = ev.id;
        if (ev.event === "token") text += JSON.parse(ev.data).text;
        else if (ev.event === "reset") text = ""; // the job restarted on another worker
        else if (ev.event === "done") return JSON.parse(ev.data);
        onText(text);
      }
      return await api("GET", `/v1/jobs/${encodeURIComponent(jobId)}`); // ended without `done`
    } catch (err) {
      if (err instanceof ApiError || signal.aborted || ++failures > 5) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500 * failures));
    }
  }
}

// --- the form -----------------------------------------------------------------------------------
function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function numberField(id, body) {
  const raw = $(id).value.trim();
  if (raw !== "") body[id] = Number(raw);
}

function jobBody() {
  const body = {};
  const text = $("prompt").value;
  if (mode() === "chat") {
    const system = $("system").value.trim();
    body.messages = [
      ...(system ? [{ role: "system", content: system }] : []),
      ...state.history,
      { role: "user", content: text },
    ];
  } else {
    body.prompt = text;
  }
  for (const id of ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "priority"]) {
    numberField(id, body);
  }
  const stop = $("stop").value.split("\n").filter((s) => s !== "");
  if (stop.length) body.stop = stop;
  if ($("ignore_eos").checked) body.ignore_eos = true;
  const hook = $("webhook_url").value.trim();
  if (hook) body.webhook = { url: hook };
  return body;
}

function showMessage(text) {
  $("message").textContent = text;
}

function setJob(id, status) {
  $("job-id").textContent = id || "–";
  $("job-status").textContent = status;
  $("cancel").disabled = !id || TERMINAL.has(status);
}

async function submitJob(event) {
  event.preventDefault();
  showMessage("");
  if (state.streamAbort) state.streamAbort.abort();
  const body = jobBody();
  const userText = $("prompt").value;
  $("output").textContent = "";
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/v1/jobs", body);
    state.jobId = job.id;
    setJob(job.id, job.status);
    refreshJobs();
    const abort = new AbortController();
    state.streamAbort = abort;
    const final = await followJob(job.id, (text) => {
      $("output").textContent = text;
      if ($("job-status").textContent.startsWith("queued")) setJob(job.id, "running");
    }, abort.signal);
    finishJob(final, userText);
  } catch (err) {
    if (err.name !== "AbortError") showMessage(err.message);
  } finally {
    $("submit").disabled = false;
    refreshJobs();
  }
}

function finishJob(job, userText) {
  setJob(job.id, job.status);
  if (job.result) $("output").textContent = job.result.text;
  if (job.error) showMessage(`${job.error.type}: ${job.error.message}`);
  if (mode() === "chat" && job.status === "succeeded") {
    state.history.push({ role: "user", content: userText }, { role: "assistant", content: job.result.text });
    $("prompt").value = "";
    renderConversation();
  }
  if (state.selected === job.id) showDetails(job.id);
}

async function cancelJob(id) {
  showMessage("");
  try {
    const job = await api("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
    // The stream's `done` may have been handled while this answer was on its way: never go back.
    const shown = $("job-status").textContent;
    if (id === state.jobId && !TERMINAL.has(shown)) {
      setJob(id, job.cancel_requested && !TERMINAL.has(job.status) ? "cancelling" : job.status);
    }
  } catch (err) {
    showMessage(err.message);
  }
  refreshJobs();
}

function renderConversation() {
  const list = $("conversation");
  list.replaceChildren(
    ...state.history.map((turn) => {
      const item = document.createElement("li");
      item.className = turn.role;
      const who = document.createElement("strong");
      who.textContent = `${turn.role}: `;
      item.append(who, document.createTextNode(turn.content));
      return item;
    })
  );
}

function switchMode() {
  const chat = mode() === "chat";
  $("chat-box").hidden = !chat;
  $("prompt-label").textContent = chat ? "Your message" : "Prompt";
}

// --- job list and details -------------------------------------------------------------------
function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function snippet(job) {
  const text = job.result ? job.result.text : job.prompt || (job.messages || []).map((m) => m.content).join(" / ");
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.id = job.id;
  const idCell = document.createElement("td");
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = job.id.slice(0, 12);
  open.title = `Show details of ${job.id}`;
  open.addEventListener("click", () => showDetails(job.id));
  idCell.append(open);
  const actions = document.createElement("td");
  if (!TERMINAL.has(job.status)) {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel";
    cancel.setAttribute("aria-label", `Cancel job ${job.id}`);
    cancel.addEventListener("click", () => cancelJob(job.id));
    actions.append(cancel);
  }
  const queue = job.queue_position === null || job.queue_position === undefined ? "" : `#${job.queue_position + 1}`;
  row.append(idCell, cell(job.status, `status ${job.status}`), cell(queue), cell(timeOf(job.created_at)),
    cell(snippet(job)), actions);
  return row;
}

async function refreshJobs() {
  try {
    const page = await api("GET", "/v1/jobs?limit=20");
    $("jobs").replaceChildren(...page.data.map(jobRow));
    showProgress(page.data.find((job) => job.id === state.jobId));
    $("jobs-message").textContent = "";
  } catch (err) {
    $("jobs").replaceChildren();
    $("jobs-message").textContent = err.message;
  }
}

/** The current job's queue position or start, from the list (its end comes from its stream). */
function showProgress(job) {
  const shown = $("job-status").textContent;
  if (!job || TERMINAL.has(job.status) || TERMINAL.has(shown) || shown === "cancelling") return;
  const position = job.queue_position;
  setJob(job.id, job.status === "queued" && position !== null && position !== undefined ? `queued (#${position + 1})` : job.status);
}

function timeOf(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "";
}

function seconds(from, to) {
  return from && to ? `${((new Date(to) - new Date(from)) / 1000).toFixed(2)} s` : "–";
}

async function showDetails(id) {
  state.selected = id;
  let job;
  try {
    job = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    showMessage(err.message);
    return;
  }
  const usage = job.result ? job.result.usage : null;
  const facts = [
    ["id", job.id],
    ["status", job.status],
    ["priority", String(job.priority)],
    ["attempts", String(job.attempts)],
    ["created", job.created_at],
    ["queued for", seconds(job.created_at, job.started_at)],
    ["ran for", seconds(job.started_at, job.finished_at)],
    ["finish reason", job.result ? job.result.finish_reason : "–"],
    ["prompt tokens", usage ? String(usage.prompt_tokens) : "–"],
    ["completion tokens", usage ? String(usage.completion_tokens) : "–"],
    ["error", job.error ? `${job.error.type}: ${job.error.message}` : "–"],
  ];
  $("details-list").replaceChildren(
    ...facts.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.field = term;
      return [dt, dd];
    })
  );
  const deliveries = job.webhook ? job.webhook.deliveries : [];
  $("deliveries").replaceChildren(
    ...(deliveries.length ? deliveries.map(deliveryRow) : [emptyRow(job.webhook ? "none yet" : "no webhook")])
  );
  $("details-json").textContent = JSON.stringify(job, null, 2);
  $("details").hidden = false;
}

function deliveryRow(d) {
  const last = d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
  const answer = last ? last.error || `HTTP ${last.status_code}` : "–";
  const row = document.createElement("tr");
  row.append(cell(d.event), cell(d.state), cell(String(d.attempts.length)), cell(answer));
  return row;
}

function emptyRow(text) {
  const row = document.createElement("tr");
  const td = cell(text);
  td.colSpan = 4;
  row.append(td);
  return row;
}

// --- API key ----------------------------------------------------------------------------------
function showKeyState() {
  $("key-state").textContent = apiKey() ? "key set for this tab" : "no key";
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $("api-key").value = "";
  showKeyState();
  showMessage("");
  refreshJobs();
}

function clearKey() {
  sessionStorage.removeItem(KEY_STORE);
  showKeyState();
  refreshJobs();
}

// --- start --------------------------------------------------------------------------------------
function start() {
  $("job-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", () => state.jobId && cancelJob(state.jobId));
  $("key-form").addEventListener("submit", saveKey);
  $("clear-key").addEventListener("click", clearKey);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  $("reset-chat").addEventListener("click", () => {
    state.history = [];
    renderConversation();
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", switchMode);
  switchMode();
  showKeyState();
  refreshJobs();
  setInterval(() => {
    if (!$("auto-refresh").checked || document.hidden) return;
    refreshJobs();
    if (state.selected) showDetails(state.selected); // timings and webhook deliveries move on
  }, REFRESH_MS);
}

start();
