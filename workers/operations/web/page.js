// The status page: polls api/status every second and the timeline every two, and shows them.
// Every value from the server is set as text (textContent), never parsed as HTML: a node
// or a reason named "<script>" is shown as those characters. The timeline is the server's
// SVG, parsed as XML (scripts in it would not run, and it has none).
"use strict";

const STATUS_EVERY_MS = 1000;
const TIMELINE_EVERY_MS = 2000;
let windowName = localStorage.getItem("failover.window") || "15m";
let colours = {};
let lastEpochs = "";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows, columns, empty) {
  const body = typeof tbody === "string" ? document.querySelector(`#${tbody} tbody`) : tbody;
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, empty)));
}

function clock(iso) {
  if (!iso) return "-";
  const moment = new Date(iso);
  const today = new Date().toDateString() === moment.toDateString();
  return today ? moment.toLocaleTimeString() : moment.toLocaleString();
}

function ago(iso, now) {
  if (!iso) return "";
  const seconds = Math.max(0, (now - new Date(iso)) / 1000);
  if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} days ago`;
}

function swatch(node) {
  return el("span", { class: "swatch", style: `background:${colours[node] || "#ccc"}` });
}

function nodeState(node) {
  if (node.stopped) return "stopped";
  if (!node.live) return "dead";
  return node.draining ? "draining" : "live";
}

function markKind(event) {
  const said = `${event.actor || ""} ${event.detail || ""}`.toLowerCase();
  return event.reason === "manual" && said.includes("drain") ? "drain" : event.reason;
}

function serviceCard(service, now) {
  const owner = service.owner;
  const card = el("div", {
    class: owner && service.owner_live ? "card" : "card nobody",
    "data-service": service.service,
    "data-owner": owner || "",
  });
  if (owner && service.owner_live) card.style.borderLeftColor = colours[owner] || "#ccc";
  card.append(el("div", { class: "name" }, service.service));
  card.append(el("div", { class: "owner" }, owner || "no owner"));
  if (owner && !service.owner_live) {
    card.append(el("div", { class: "warn" }, `${owner}'s lease has lapsed: a takeover is due`));
  }
  const reason = service.reason ? markKind(service) : null;
  card.append(el("div", { class: "facts" },
    `epoch ${service.epoch}`,
    service.since ? ` · since ${clock(service.since)} (${ago(service.since, now)})` : "",
    reason ? " · " : "",
    reason ? el("span", { class: `badge reason ${reason}` }, reason) : null));
  if (service.detail || service.actor) {
    card.append(el("div", { class: "why" }, [service.detail, service.actor && `by ${service.actor}`]
      .filter(Boolean).join(" ")));
  }
  const handover = service.handover;
  if (handover) {
    const to = handover.to ? `handing over to ${handover.to}` : "releasing";
    const left = handover.left_s === null ? "" :
      handover.left_s >= 0 ? `, ${handover.left_s.toFixed(0)} s left` :
      `, ${(-handover.left_s).toFixed(0)} s past its grace`;
    card.append(el("div", { class: "handover" }, `${to}${left} (${handover.reason || "manual"})`));
  }
  return card;
}

function leaseBar(node) {
  const lease = node.lease_timeout_s || 1;
  const left = Math.max(0, node.lease_left_s);
  const share = Math.min(1, left / lease);
  const bar = el("div", { class: share <= 0 ? "bar out" : share < 0.34 ? "bar low" : "bar" },
    el("span", { style: `width:${(share * 100).toFixed(1)}%` }));
  return el("div", { class: "lease", title: `${left.toFixed(2)} s left of a ${lease} s lease` },
    bar, el("span", { class: "muted" }, `${left.toFixed(1)} / ${lease} s`));
}

function ms(value) {
  return value === null || value === undefined ? "-" : `${Math.round(value)}`;
}

// A store the node reached, and whether its link is encrypted (TLS) or in the clear.
function server(address, encrypted) {
  const link = encrypted === true ? " TLS" : encrypted === false ? " plain" : "";
  return `${address || "-"}${link}`;
}

function nodeRow(node) {
  const state = nodeState(node);
  return el("tr", { "data-node": node.name, "data-state": state },
    el("td", {}, swatch(node.name), el("strong", {}, node.name)),
    el("td", {}, node.region),
    el("td", {}, el("span", { class: `badge ${state}` }, state)),
    el("td", {}, leaseBar(node)),
    el("td", { class: "num" }, node.last_heartbeat_age_s === null ? "-" :
      `${node.last_heartbeat_age_s.toFixed(1)} s`),
    el("td", { class: "num" },
      `${ms(node.db_round_trip_ms)} / ${ms(node.broker_round_trip_ms)} / ${ms(node.heartbeat_cycle_ms)} ms`),
    el("td", { class: "muted" },
      server(node.database_server, node.database_encrypted), el("br"),
      server(node.broker_server, node.broker_encrypted)),
    el("td", { class: "muted" }, node.verdict || ""));
}

function eventRow(event) {
  const kind = markKind(event);
  return el("tr", {},
    el("td", { class: "num" }, clock(event.at)),
    el("td", {}, event.service),
    el("td", {}, event.from ? swatch(event.from) : null, event.from || "nobody", " → ",
      event.to ? swatch(event.to) : null, event.to || "nobody"),
    el("td", { class: "num" }, event.epoch),
    el("td", {}, el("span", { class: `badge reason ${kind}` }, kind)),
    el("td", { class: "muted" }, [event.detail, event.actor && `by ${event.actor}`]
      .filter(Boolean).join(" ")));
}

function folderRow(folder) {
  return el("tr", {},
    el("td", {}, folder.folder),
    el("td", { class: "num" }, folder.waiting),
    el("td", { class: "num" }, folder.processing),
    el("td", { class: "num" }, folder.processed_last_hour),
    el("td", { class: "num" }, folder.failed_last_hour),
    el("td", { class: "num" }, folder.refused));
}

function scriptRow(script) {
  const run = script.last_run;
  return el("tr", {},
    el("td", {}, script.script),
    el("td", { class: "muted" }, script.schedule || "-"),
    el("td", {}, run ? el("span", { class: `badge ${run.status}` }, run.status) : "never",
      run ? ` ${clock(run.started_at)} on ${run.node}` : ""),
    el("td", { class: "num" }, clock(script.next_due_at)));
}

function runRow(run) {
  return el("tr", {},
    el("td", { class: "num" }, clock(run.started_at)),
    el("td", {}, run.script),
    el("td", {}, swatch(run.node), run.node),
    el("td", {}, run.trigger),
    el("td", {}, el("span", { class: `badge ${run.status}` }, run.status),
      run.exit_code === null ? "" : ` (exit ${run.exit_code})`),
    el("td", { class: "num" }, run.took_s === null ? "-" : `${run.took_s} s`));
}

function show(status) {
  colours = status.colours || {};
  const now = new Date(status.database_time);
  const services = status.services.map((service) => serviceCard(service, now));
  document.getElementById("services").replaceChildren(...services);
  fill("nodes", status.nodes.map(nodeRow), 8, "no node registered");
  fill("events", status.events.map(eventRow), 6, "no change of owner yet");
  fill("folders", (status.folders || []).map(folderRow), 6, "no hot folder configured here");
  fill("scripts", (status.scripts || []).map(scriptRow), 4, "no script configured here");
  fill("runs", (status.recent_runs || []).map(runRow), 6, "no run yet");
  const epochs = status.services.map((s) => `${s.service}:${s.epoch}`).join(",");
  if (epochs !== lastEpochs) {
    lastEpochs = epochs;
    refreshTimeline();
  }
}

function fresh(ok, text) {
  document.getElementById("freshness").className = ok ? "freshness ok" : "freshness stale";
  document.getElementById("freshness-text").textContent = text;
}

async function fetchOk(url) {
  const answer = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
  return answer;
}

let statusBusy = false;
async function refreshStatus() {
  if (statusBusy) return;
  statusBusy = true;
  try {
    const status = await (await fetchOk("api/status")).json();
    show(status);
    fresh(true, `database time ${clock(status.database_time)}`);
  } catch (error) {
    fresh(false, `not updated: ${error.message}`);
  } finally {
    statusBusy = false;
  }
}

let timelineBusy = false;
async function refreshTimeline() {
  if (timelineBusy) return;
  timelineBusy = true;
  try {
    const answer = await fetchOk(`timeline.svg?window=${encodeURIComponent(windowName)}`);
    const parsed = new DOMParser().parseFromString(await answer.text(), "image/svg+xml");
    const svg = parsed.documentElement;
    if (svg.nodeName === "svg") {
      document.getElementById("timeline").replaceChildren(document.importNode(svg, true));
    }
  } catch (error) {
    fresh(false, `timeline not updated: ${error.message}`);
  } finally {
    timelineBusy = false;
  }
}

function chooseWindow(name) {
  windowName = name;
  localStorage.setItem("failover.window", name);
  for (const button of document.querySelectorAll("#windows button")) {
    button.classList.toggle("on", button.dataset.window === name);
  }
  refreshTimeline();
}

function describeMark(event, chosen) {
  const mark = event.target.closest && event.target.closest(".mark");
  if (!mark) return;
  const detail = document.getElementById("mark-detail");
  detail.textContent = mark.getAttribute("data-detail");
  detail.classList.toggle("chosen", chosen);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#windows button")) {
    button.addEventListener("click", () => chooseWindow(button.dataset.window));
  }
  const timeline = document.getElementById("timeline");
  timeline.addEventListener("click", (event) => describeMark(event, true));
  timeline.addEventListener("mouseover", (event) => describeMark(event, false));
  chooseWindow(windowName);
  refreshStatus();
  setInterval(refreshStatus, STATUS_EVERY_MS);
  setInterval(refreshTimeline, TIMELINE_EVERY_MS);
});
