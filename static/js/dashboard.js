// A Citizen Science project's dashboard, for the dataset's curators: progress, volunteers, submissions over time
// and the agreement of the consensus (hand-drawn SVG), the tasks (paged) with their priority and status, the
// consensus recomputed on request, and the exports.
import { element, getJSON, mountAccount, postJSON } from "./api.js";

const [, datasetRef, , projectName] = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
const api = `/api/datasets/${encodeURIComponent(datasetRef)}/projects/${encodeURIComponent(projectName)}`;
const $ = (id) => document.getElementById(id);
const PAGE = 50;
const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 30000;

const patchJSON = (url, body) => getJSON(url, {
  method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

// Round steps for an axis from 0 to ``top``: 1, 2 or 5 times a power of ten, about four of them.
function ticks(top) {
  const rough = Math.max(top, 1) / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough));  // counts: whole steps
  const values = [];
  for (let value = 0; value <= Math.max(top, 1) + step / 2; value += step) values.push(value);
  if (values[values.length - 1] < top) values.push(values[values.length - 1] + step);
  return values;
}

// A bar chart: bars over categories, a y axis with ticks and grid lines, labels under some bars, both axes named.
function barChart({ values, labels, titles, xName, yName, description }) {
  const width = 640;
  const height = 220;
  const margin = { left: 48, right: 12, top: 12, bottom: 44 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const yTicks = ticks(Math.max(0, ...values));
  const top = yTicks[yTicks.length - 1];
  const y = (value) => margin.top + plotHeight * (1 - value / top);
  const band = plotWidth / Math.max(values.length, 1);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": description,
    class: "bar-chart" }, svg("title", {}, description));
  const axes = svg("g", { class: "axis" });
  for (const value of yTicks) {
    axes.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value), class: "grid" }),
      svg("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" }, value.toLocaleString("en")));
  }
  axes.append(
    svg("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotHeight }),
    svg("line", { x1: margin.left, x2: width - margin.right, y1: margin.top + plotHeight, y2: margin.top + plotHeight }),
    svg("text", { x: margin.left + plotWidth / 2, y: height - 6, "text-anchor": "middle", class: "axis-name" }, xName),
    svg("text", { x: 12, y: margin.top + plotHeight / 2, "text-anchor": "middle", class: "axis-name",
      transform: `rotate(-90 12 ${margin.top + plotHeight / 2})` }, yName));
  const bars = svg("g", { class: "bars" });
  values.forEach((value, index) => {
    const x = margin.left + index * band;
    bars.append(svg("rect", { x: x + band * 0.1, width: band * 0.8, y: y(value), height: y(0) - y(value),
      "data-value": value }, svg("title", {}, titles[index])));
    if (labels[index] !== null) {
      axes.append(svg("text", { x: labels[index].at === "edge" ? x : x + band / 2, y: margin.top + plotHeight + 16,
        "text-anchor": "middle" }, labels[index].text));
    }
  });
  const last = labels[values.length];
  if (last) {  // a label at the right edge (a histogram's last bin edge)
    axes.append(svg("text", { x: margin.left + plotWidth, y: margin.top + plotHeight + 16, "text-anchor": "middle" },
      last.text));
  }
  chart.append(axes, bars);
  return chart;
}

function drawPerHour(perHour) {
  const hour = (iso) => new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  const day = (iso) => new Date(iso).toLocaleDateString("en-GB", { day: "numeric", month: "short" });
  const labels = perHour.map(([iso], index) => (index % 6 === 0 ? { text: hour(iso) } : null));
  const total = perHour.reduce((sum, [, count]) => sum + count, 0);
  $("per-hour").replaceChildren(barChart({
    values: perHour.map(([, count]) => count), labels,
    titles: perHour.map(([iso, count]) => `${day(iso)} ${hour(iso)}: ${count} submission${count === 1 ? "" : "s"}`),
    xName: "hour (your local time)", yName: "submissions",
    description: `Submissions per hour over the last 48 hours: ${total} in all`,
  }));
}

function drawAgreement(edges, counts) {
  const labels = edges.map((edge, index) => (index % 2 === 0 ? { text: edge.toFixed(1), at: "edge" } : null));
  $("agreement").replaceChildren(barChart({
    values: counts, labels,
    titles: counts.map((count, index) => `agreement ${edges[index].toFixed(1)}–${edges[index + 1].toFixed(1)}: ` +
      `${count} mark${count === 1 ? "" : "s"}`),
    xName: "agreement (share of the task's volunteers who marked it)", yName: "consensus marks",
    description: `Histogram of the agreement of ${counts.reduce((a, b) => a + b, 0)} consensus marks`,
  }));
}

function showStats(stats, project) {
  const share = stats.tasks ? stats.retired / stats.tasks : 0;
  const bar = $("progress-bar");
  bar.setAttribute("aria-valuemax", String(stats.tasks));
  bar.setAttribute("aria-valuenow", String(stats.retired));
  bar.firstElementChild.style.width = `${(share * 100).toFixed(1)}%`;
  $("progress-text").textContent = `${stats.retired.toLocaleString("en")} of ${stats.tasks.toLocaleString("en")} ` +
    `tasks retired (${(share * 100).toFixed(1)} %), each after ${project.workflow.redundancy} answers`;
  const rows = [["Active tasks", stats.active], ["Paused tasks", stats.paused], ["Gold-standard tasks", stats.gold],
    ["Submissions", stats.submissions], ["Volunteers", stats.volunteers],
    ["Active in the last 24 h", stats.active_volunteers_24h], ["Active in the last hour", stats.active_volunteers_1h],
    ["Consensus marks", stats.consensus_marks]];
  $("figures").replaceChildren(...rows.flatMap(([label, value]) => [element("dt", {}, label),
    element("dd", { "data-figure": label }, Number(value).toLocaleString("en"))]));
  drawPerHour(stats.per_hour.map(({ hour, submissions }) => [hour, submissions]));
  drawAgreement(stats.agreement_bins, stats.agreement_counts);
}

// The tasks table: a page at a time, filtered by status and gold; priority and status changed in place.
function mountTasks() {
  let offset = 0;
  let total = 0;
  const body = $("tasks").querySelector("tbody");
  const report = (message) => { $("tasks-status").textContent = message; };

  async function change(task, changes) {
    try {
      await patchJSON(`${api}/tasks/${task.id}`, changes);
      report("");
      await load();
      refreshStats();
    } catch (error) {
      report(`Task ${task.id} not changed: ${error.message}`);
    }
  }

  function row(task) {
    const priority = element("input", { type: "number", min: "-1000", max: "1000", step: "1", value: task.priority,
      "aria-label": `priority of task ${task.id}`, class: "priority" });
    priority.addEventListener("change", () => {
      const value = Number(priority.value);
      if (Number.isInteger(value)) change(task, { priority: value });
      else report("A priority is a whole number from -1000 to 1000.");
    });
    const actions = element("td", { class: "actions" });
    const button = (label, status) => {
      const b = element("button", { type: "button", "data-action": status }, label);
      b.addEventListener("click", () => change(task, { status }));
      actions.append(b);
    };
    if (task.status === "active") {
      button("Pause", "paused");
      button("Retire", "retired");
    } else if (task.status === "paused") {
      button("Resume", "active");
      button("Retire", "retired");
    } else {
      button("Un-retire", "active");
    }
    const region = `${task.lower.join(", ")} – ${task.upper.join(", ")}`;
    return element("tr", { "data-task": task.id }, element("td", {}, String(task.id)), element("td", {}, region),
      element("td", { class: "task-status" }, task.status), element("td", {}, priority),
      element("td", {}, task.gold ? "yes" : ""), element("td", {}, String(task.handed_out)),
      element("td", { class: "task-submissions" }, String(task.submissions)), actions);
  }

  async function load() {
    const query = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if ($("task-status").value) query.set("status", $("task-status").value);
    if ($("task-gold").value) query.set("gold", $("task-gold").value);
    try {
      const page = await getJSON(`${api}/tasks?${query}`);
      total = page.total;
      body.replaceChildren(...page.tasks.map(row));
      $("tasks-count").textContent = total ? `${offset + 1}–${offset + page.tasks.length} of ${total}` : "no tasks";
      $("tasks-previous").disabled = offset === 0;
      $("tasks-next").disabled = offset + PAGE >= total;
    } catch (error) {
      report(`Could not list the tasks: ${error.message}`);
    }
  }

  $("task-status").addEventListener("change", () => { offset = 0; load(); });
  $("task-gold").addEventListener("change", () => { offset = 0; load(); });
  $("tasks-previous").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  $("tasks-next").addEventListener("click", () => { if (offset + PAGE < total) { offset += PAGE; load(); } });
  return load();
}

let project = null;
async function refreshStats() {
  try {
    showStats(await getJSON(`${api}/stats`), project);
  } catch (error) {
    $("action-status").textContent = `Could not update the figures: ${error.message}`;
  }
}

function mountActions() {
  const said = $("action-status");
  $("export-zooniverse").href = `${api}/export?format=zooniverse`;
  $("export-consensus").href = `${api}/export?format=consensus`;
  const recompute = $("recompute");
  recompute.addEventListener("click", async () => {
    recompute.disabled = true;
    said.textContent = "Recomputing the consensus of every retired task…";
    try {
      const { marks } = await postJSON(`${api}/consensus`, {});
      said.textContent = `Consensus recomputed: ${marks.toLocaleString("en")} mark${marks === 1 ? "" : "s"}.`;
      await refreshStats();
    } catch (error) {
      said.textContent = `Consensus not recomputed: ${error.message}`;
    } finally {
      recompute.disabled = false;
    }
  });
  const status = $("project-status");
  status.value = project.status;
  status.addEventListener("change", async () => {
    try {
      project = await patchJSON(api, { status: status.value });
      said.textContent = `The project is ${project.status}.`;
    } catch (error) {
      status.value = project.status;
      said.textContent = `Status not changed: ${error.message}`;
    }
  });
}

function refused(error) {
  if (error.status === 401) return "Only the curators of this dataset see its dashboard: sign in as one.";
  if (error.status === 403) return "Only the curators of this dataset see its dashboard.";
  if (error.status === 404) return "There is no such project (or its dataset is not yours to see).";
  return `Could not open the dashboard: ${error.message}`;
}

try {
  await mountAccount();
  const volunteers = location.pathname.replace(/\/dashboard\/?$/, "");
  $("volunteer-link").href = volunteers;
  project = await getJSON(api);
  document.title = `Lamella: ${project.title} (dashboard)`;
  $("title").textContent = `${project.title}: dashboard`;
  $("crumb").replaceChildren(element("a", { href: `/datasets/${encodeURIComponent(project.dataset)}` },
    project.dataset), " / ", element("a", { href: volunteers }, project.name), " / dashboard");
  const stats = await getJSON(`${api}/stats`);  // curators only: 401/403 for others
  $("content").hidden = false;
  showStats(stats, project);
  mountActions();
  await mountTasks();
  setInterval(refreshStats, REFRESH_MS);
} catch (error) {
  $("status").textContent = refused(error);
  if ($("title").textContent === "Loading…") $("title").textContent = "Dashboard unavailable";
}
