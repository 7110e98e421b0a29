// A Citizen Science project's page for volunteers: what it is about, the tutorial once, then one task after
// another in the embedded viewer. The viewer's own state holds the marks; they are read from it on Submit, so a
// failed submission leaves them where they are.
import { element, getJSON, mountAccount, postJSON, xsrfToken } from "./api.js";

const [, datasetRef, , projectName] = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
const api = `/api/datasets/${encodeURIComponent(datasetRef)}/projects/${encodeURIComponent(projectName)}`;
const $ = (id) => document.getElementById(id);
const frame = $("viewer");
const MARKS = "marks";  // the task state's annotation layer (viewer/state.py)
const FRAME_LAYER = "task frame";
const EXPERT_LAYER = "expert's marks";
const FEEDBACK_MS = 4000;  // how long a gold task's expert marks stay before the next task
const POLL_MS = 300;
const HINTS = {
  point: "Ctrl+click the centre of each one to mark it.",
  box: "Ctrl+click one corner, then Ctrl+click the opposite corner.",
  outline: "Ctrl+click around its edge point by point; Ctrl+click the last point again to close the outline.",
};
const SHOWN = { point: "point", box: "axis_aligned_bounding_box", outline: "polyline" };

let project = null;
let token = null;
let offer = null;      // the task on screen
let offerSource = null;  // its region's source
let previewSince = null;  // when its picture was shown in the viewer's place
let startedAt = null;  // when it was shown
let busy = false;
const labelOf = new Map();  // mark (annotation id) → the label chosen when it was drawn

function say(message) {
  for (const id of ["status", "intro-status"]) $(id).textContent = message;
}

// The task view is laid out from the start, off stage: the viewer in it loads and warms up while the volunteer
// reads (a viewer that is not laid out draws and fetches nothing).
function show(section) {
  for (const id of ["intro", "tutorial", "done"]) $(id).hidden = id !== section;
  $("task").classList.toggle("offstage", section !== "task");
  $("task").setAttribute("aria-hidden", String(section !== "task"));
}

function showProgress(progress) {
  const tasks = `You have done ${progress.submitted} task${progress.submitted === 1 ? "" : "s"}`;
  const line = `${tasks} · project ${progress.retired} of ${progress.tasks} retired`;
  $("progress").textContent = line;
  $("intro-progress").textContent = line;
}

// The tutorial: its steps with their pictures, then the tasks. Done once per volunteer (POST /me).
function runTutorial() {
  const steps = project.workflow.tutorial;
  let at = 0;
  const finish = async () => {
    $("tutorial-next").disabled = true;
    try {
      await Promise.all([postJSON(`${api}/me`, {}), startTasks()]);  // (a task needs no tutorial first)
    } catch (error) {
      say(`Could not start: ${error.message}`);
    } finally {
      $("tutorial-next").disabled = false;
    }
  };
  if (!steps.length) return finish();
  const draw = () => {
    const step = steps[at];
    $("tutorial-count").textContent = `Step ${at + 1} of ${steps.length}`;
    $("tutorial-text").textContent = step.text;
    const picture = $("tutorial-picture");
    picture.hidden = !step.picture;
    if (step.picture) picture.src = `${api}/tutorial/${at}`;
    $("tutorial-back").disabled = at === 0;
    $("tutorial-next").textContent = at === steps.length - 1 ? "Start" : "Next";
  };
  $("tutorial-back").onclick = () => { at = Math.max(0, at - 1); draw(); };
  $("tutorial-next").onclick = () => { if (at < steps.length - 1) { at += 1; draw(); } else finish(); };
  show("tutorial");
  draw();
  return undefined;
}

// The viewer session of this project in this tab (sessionStorage): a reload keeps the task and its marks. The
// viewer opens at once, empty, while the volunteer reads: its scripts are in place when the first task comes.
let heldSource = null;  // the region a session already shows (after a reload), whose marks are kept
async function openViewer(me) {
  const key = `lamella-task-session-${project.dataset_id}-${project.name}-${me.signed_in ? me.name : ""}`;
  token = sessionStorage.getItem(key);
  let held = token ? await getJSON(`/api/sessions/${token}`).catch(() => null) : null;
  if (!held) {
    ({ token } = await getJSON(`/api/datasets/${project.dataset_id}/sessions`, { method: "POST" }));
    sessionStorage.setItem(key, token);
    held = null;
  }
  frame.dataset.token = token;
  if (held && marksLayer(held.state)) {
    heldSource = sourceOf(held.state);
  } else {
    const dimensions = held?.state?.dimensions || (await getJSON(`/api/sessions/${token}`)).state.dimensions;
    await putState(warmUpState(dimensions));
  }
  frame.src = `/v/${token}/`;
}

// Until the first task: one voxel of the image (one small chunk), so that the viewer has set up its image layers
// and chunk decoders before a task needs them.
function warmUpState(dimensions) {
  const image = `${location.origin}/api/datasets/${project.dataset_id}/images/${encodeURIComponent(project.image)}`;
  return {
    dimensions, position: [0.5, 0.5, 0.5], crossSectionScale: 64, layout: "xy",
    layers: [{ type: "image", name: project.image, source: `precomputed://${image}/region/0_0_0_1_1_1/precomputed` }],
    showDefaultAnnotations: false, showAxisLines: false,
  };
}

const sourceOf = (state) => {
  const source = state?.layers?.[0]?.source;
  return typeof source === "string" ? source : source?.url;
};

async function putState(state) {
  const response = await fetch(`/api/sessions/${token}`, {
    method: "PUT", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken() },
    body: JSON.stringify({ state }),
  });
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).message || response.statusText);
}

// A state for the viewer: straight into the open viewer once it runs with this session's state (it sends it on
// to the session itself, as it does every change made in it), else through the session, which the viewer
// loads when it starts (a round trip more, and the server's push).
async function applyState(state) {
  const viewer = liveViewer();
  const layers = viewer ? liveState()?.layers || [] : [];
  const synced = layers.some((layer) => layer.name === MARKS || layer.name === project.image);
  if (synced) viewer.state.restoreState(state);
  else await putState(state);
}

const liveViewer = () => frame.contentWindow?.viewer;
function liveState() {
  try {
    return liveViewer()?.state?.toJSON() ?? null;
  } catch {
    return null;  // the viewer is still starting
  }
}
const marksLayer = (state) => (state?.layers || []).find((layer) => layer.name === MARKS);

// The task's region drawn as a frame: marks go inside it (the image around it is its chunks' margin).
function withFrame(state, task) {
  const dimensions = marksLayer(state)?.source?.transform?.outputDimensions || state.dimensions;
  const frameLayer = {
    type: "annotation", name: FRAME_LAYER, source: { url: "local://annotations", transform: { outputDimensions: dimensions } },
    annotationColor: "#8fa3b8", annotations: [{
      type: "axis_aligned_bounding_box", id: "frame",
      pointA: [task.lower[0], task.lower[1], task.slice], pointB: [task.upper[0], task.upper[1], task.slice + 1],
    }],
  };
  const layers = state.layers.filter((layer) => layer.name !== FRAME_LAYER);
  const at = layers.findIndex((layer) => layer.name === MARKS);
  layers.splice(at < 0 ? layers.length : at, 0, frameLayer);
  return { ...state, layers, selectedLayer: { layer: MARKS, visible: false } };
}

// Shows a task: its state goes to the viewer. A session that already shows this task (a reload) keeps its state:
// the marks drawn before the reload stay.
async function showTask(next, state) {
  offer = next;
  offerSource = sourceOf(state);
  useWorkflow(next.workflow);
  const keep = heldSource !== null && heldSource === offerSource;
  heldSource = null;
  $("preview").hidden = true;
  if (!liveViewer()?.isReady?.()) drawPreview(next, state).catch(() => { $("preview").hidden = true; });
  labelOf.clear();
  $("task-title").textContent = `Task ${next.task}`;
  show("task");  // first: a viewer off stage draws (and fetches) lazily
  if (!keep) await applyState(withFrame(state, next));
  startedAt = new Date().toISOString();
  frame.dataset.task = String(next.task);
  refresh();
}

// While the viewer is still loading (its scripts are most of what a first visit downloads), the task's slice is
// shown as a picture in its place, drawn from the chunks of the region that the viewer fetches next (the
// browser's cache serves them to it again). Removed once the viewer has drawn the task.
const VIEW_SIDE = 560;  // screen pixels of a task region's longer side (viewer/state.py: task_state)
const VIEWER_CHROME = 48;  // Neuroglancer's bars above its panel
async function drawPreview(task, state) {
  const canvas = $("preview");
  const base = sourceOf(state).replace(/^precomputed:\/\//, "");
  const info = await getJSON(`${base}/info`);
  const [width, height] = [task.upper[0] - task.lower[0], task.upper[1] - task.lower[1]];
  const perPixel = Math.max(width, height) / VIEW_SIDE;  // level-0 voxels per screen pixel
  const resolution = (scale) => scale.resolution[0] / info.scales[0].resolution[0];
  const scale = [...info.scales].reverse().find((s) => resolution(s) <= Math.max(1, perPixel)) || info.scales[0];
  const factor = resolution(scale);
  const [cx, cy, cz] = scale.chunk_sizes[0];
  const [ox, oy, oz] = scale.voxel_offset;
  const [sx, sy, sz] = scale.size;
  const [lx, ly, z] = [task.lower[0] / factor, task.lower[1] / factor, Math.floor(task.slice / factor)];
  const [ux, uy] = [task.upper[0] / factor, task.upper[1] / factor];
  const z0 = oz + Math.floor((z - oz) / cz) * cz;
  const z1 = Math.min(z0 + cz, oz + sz);
  const image = document.createElement("canvas");
  [image.width, image.height] = [Math.ceil(ux - lx), Math.ceil(uy - ly)];
  const context = image.getContext("2d");
  const pieces = [];
  for (let x0 = ox + Math.floor((lx - ox) / cx) * cx; x0 < ux; x0 += cx) {
    for (let y0 = oy + Math.floor((ly - oy) / cy) * cy; y0 < uy; y0 += cy) {
      const [x1, y1] = [Math.min(x0 + cx, ox + sx), Math.min(y0 + cy, oy + sy)];
      const chunk = new Image();
      chunk.src = `${base}/${scale.key}/${x0}-${x1}_${y0}-${y1}_${z0}-${z1}`;
      // A JPEG chunk is its slices one under another: this slice is the band at (z - z0) rows of the chunk.
      pieces.push(chunk.decode().then(() => context.drawImage(chunk, 0, (z - z0) * (y1 - y0), x1 - x0, y1 - y0,
        x0 - lx, y0 - ly, x1 - x0, y1 - y0)));
    }
  }
  await Promise.all(pieces);
  if (offer !== task || liveViewer()?.isReady?.()) return;  // another task by now, or the viewer was quicker
  const [low, high] = state.layers[0].shaderControls?.normalized?.range || [0, 255];
  const pixels = context.getImageData(0, 0, image.width, image.height);
  for (let i = 0; i < pixels.data.length; i += 4) {  // the viewer's contrast window
    const value = Math.max(0, Math.min(255, ((pixels.data[i] - low) * 255) / Math.max(high - low, 1e-6)));
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
  }
  [canvas.width, canvas.height] = [image.width, image.height];
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  const zoom = VIEW_SIDE / Math.max(width, height) * factor;
  Object.assign(canvas.style, { width: `${image.width * zoom}px`, height: `${image.height * zoom}px`,
    top: `calc(50% + ${VIEWER_CHROME / 2}px)` });
  canvas.hidden = false;
  previewSince = Date.now();
}

// The viewer shows the task (its image drawn): the picture in its place goes.
function previewDone() {
  const canvas = $("preview");
  if (canvas.hidden) return;
  const viewer = liveViewer();
  const showing = viewer && sourceOf(liveState()) === offerSource;
  if (showing && (viewer.isReady?.() || Date.now() - previewSince > 10000)) canvas.hidden = true;
}

async function startTasks() {
  const { task, state, progress } = await postJSON(`${api}/next`, {});
  showProgress(progress);
  if (!task) {
    show("done");
    return;
  }
  await showTask(task, state);
}

// Marks as the API takes them (image voxels), from the annotations of the viewer's "marks" layer.
function toMark(annotation, label) {
  if (annotation.type === "point") return { type: "point", point: annotation.point.slice(0, 3).map(Number), label };
  if (annotation.type === "axis_aligned_bounding_box") {
    const lower = [0, 1, 2].map((i) => Math.min(annotation.pointA[i], annotation.pointB[i]));
    const upper = [0, 1, 2].map((i) => Math.max(annotation.pointA[i], annotation.pointB[i]));
    if (upper[2] - lower[2] < 1) {  // drawn on one slice: it spans that slice
      lower[2] = Math.floor(lower[2]);
      upper[2] = lower[2] + 1;
    }
    return { type: "box", lower, upper, label };
  }
  if (annotation.type === "polyline") {
    const points = [];
    for (const point of annotation.points) {
      const last = points[points.length - 1];
      if (!last || last[0] !== point[0] || last[1] !== point[1]) points.push([Number(point[0]), Number(point[1])]);
    }
    const [first, last] = [points[0], points[points.length - 1]];
    if (points.length > 3 && first[0] === last[0] && first[1] === last[1]) points.pop();
    return { type: "outline", points, z: Math.floor(annotation.points[0][2]), label };
  }
  return null;
}

function currentMarks() {
  const annotations = marksLayer(liveState())?.annotations;
  if (!annotations) return null;
  const wanted = SHOWN[offer.workflow.tool];
  return annotations.filter((a) => a.type === wanted)
    .map((a) => toMark(a, labelOf.get(a.id) || $("label").value));
}

function outside(mark) {
  const points = mark.type === "point" ? [mark.point] : mark.type === "box" ? [mark.lower, mark.upper]
    : mark.points.map(([x, y]) => [x, y, mark.z]);
  return points.some((p) => p.some((v, i) => !(v >= offer.lower[i] && v <= offer.upper[i])));
}

// What the side panel shows follows the viewer: the marks drawn so far and which buttons apply.
function refresh() {
  if (!offer) return;
  previewDone();
  const annotations = marksLayer(liveState())?.annotations || [];
  for (const annotation of annotations) {
    if (!labelOf.has(annotation.id)) labelOf.set(annotation.id, $("label").value);
  }
  const count = annotations.length;
  const byLabel = new Map();
  for (const annotation of annotations) {
    const label = labelOf.get(annotation.id);
    byLabel.set(label, (byLabel.get(label) || 0) + 1);
  }
  const labelled = offer.workflow.labels.length > 1 && count
    ? `: ${[...byLabel].map(([label, n]) => `${n} ${label}`).join(", ")}` : "";
  $("marks").textContent = count ? `${count} mark${count === 1 ? "" : "s"}${labelled}` : "No marks yet.";
  $("marks").dataset.count = String(count);
  $("submit").disabled = busy || !count;
  $("nothing-here").disabled = busy || count > 0;
  $("nothing-here").title = count ? "Undo your marks first" : "";
  $("undo").disabled = busy || !count;
}

function undo() {
  const annotations = marksLayer(liveState())?.annotations || [];
  const last = annotations[annotations.length - 1];
  if (!last) return;
  const source = liveViewer()?.layerManager?.getLayerByName(MARKS)?.layer?.localAnnotations;
  if (source) {
    const reference = source.getReference(last.id);
    source.delete(reference);
    reference.dispose();
  } else {  // another Neuroglancer: the whole state without that mark
    const state = liveState();
    marksLayer(state).annotations = annotations.slice(0, -1);
    liveViewer().state.restoreState(state);
  }
  labelOf.delete(last.id);
  refresh();
}

// The expert's marks of a gold-standard task, in the viewer's annotation format.
function expertAnnotations(marks) {
  return marks.map((mark, index) => {
    const id = `expert-${index}`;
    if (mark.type === "point") return { type: "point", id, point: mark.point };
    if (mark.type === "box") return { type: "axis_aligned_bounding_box", id, pointA: mark.lower, pointB: mark.upper };
    const points = mark.points.map(([x, y]) => [x, y, mark.z + 0.5]);
    return { type: "polyline", id, points: [...points, points[0]] };
  });
}

async function showFeedback(feedback) {
  const box = $("feedback");
  box.hidden = false;
  box.replaceChildren(element("strong", {}, "Compared with an expert: "), feedback.message);
  const state = liveState();
  if (!state || !feedback.expected.length) return;
  const dimensions = marksLayer(state)?.source?.transform?.outputDimensions || state.dimensions;
  state.layers.push({
    type: "annotation", name: EXPERT_LAYER, annotationColor: "#3ee07a",
    source: { url: "local://annotations", transform: { outputDimensions: dimensions } },
    annotations: expertAnnotations(feedback.expected),
  });
  await applyState(state).catch(() => {});
  await new Promise((resolve) => { setTimeout(resolve, FEEDBACK_MS); });
}

async function submit(body) {
  if (busy || !offer) return;
  busy = true;
  refresh();
  say("Sending…");
  try {
    const answer = await postJSON(`${api}/tasks/${offer.task}/submission`, { ...body, started_at: startedAt });
    say("");
    showProgress(answer.progress);
    $("feedback").hidden = true;
    if (answer.feedback) await showFeedback(answer.feedback);
    if (!answer.next) {
      offer = null;
      show("done");
      return;
    }
    await showTask(answer.next, answer.state);
  } catch (error) {
    // The marks stay in the viewer: the volunteer may try again (or, if the task is gone, go on to the next).
    say(`Not sent: ${error.message}`);
    if (error.status === 409) $("skip").hidden = false;
  } finally {
    busy = false;
    refresh();
  }
}

function onSubmit() {
  const marks = currentMarks();
  if (marks === null) {
    say("The viewer is not ready yet.");
    return;
  }
  const bad = marks.filter((mark) => mark === null || outside(mark)).length;
  if (bad) {
    say(`${bad} mark${bad === 1 ? " lies" : "s lie"} outside the task's frame: undo ${bad === 1 ? "it" : "them"} ` +
      "or mark inside the frame.");
    return;
  }
  if (offer.workflow.tool === "outline" && marks.some((mark) => mark.points.length < 3)) {
    say("An outline needs at least 3 points.");
    return;
  }
  submit({ marks });
}

// The instructions, the tool's hint and the labels of the workflow version a task is done with.
function useWorkflow(workflow) {
  $("task-instructions").textContent = workflow.instructions;
  $("hint").textContent = HINTS[workflow.tool] || "";
  const select = $("label");
  const labels = [...select.options].map((option) => option.value);
  if (labels.join("\n") !== workflow.labels.join("\n")) {
    select.replaceChildren(...workflow.labels.map((label) => element("option", { value: label }, label)));
  }
  $("label-choice").hidden = workflow.labels.length < 2;
}

function mountTaskControls() {
  useWorkflow(project.workflow);
  $("label").addEventListener("focus", refresh);  // marks drawn so far keep the label they were drawn with
  $("submit").addEventListener("click", onSubmit);
  $("nothing-here").addEventListener("click", () => submit({ nothing_here: true }));
  $("undo").addEventListener("click", undo);
  const skip = element("button", { type: "button", id: "skip", hidden: "" }, "Next task");
  skip.addEventListener("click", () => {
    skip.hidden = true;
    say("");
    startTasks().catch((error) => say(`Could not get a task: ${error.message}`));
  });
  $("submit").parentElement.append(skip);
  setInterval(refresh, POLL_MS);
}

try {
  $("intro").append(element("p", { id: "intro-status", role: "status", class: "error" }));
  const me = await mountAccount();
  project = await getJSON(api);
  document.title = `Lamella: ${project.title}`;
  $("crumb").replaceChildren(element("a", { href: `/datasets/${encodeURIComponent(project.dataset)}` },
    project.dataset), ` / ${project.name}`);
  $("title").textContent = project.title;
  $("description").textContent = project.description;
  $("instructions").textContent = project.workflow.instructions;
  mountTaskControls();
  getJSON(`/api/datasets/${project.dataset_id}`).then((dataset) => {
    if (!dataset.can?.curate) return;
    $("dashboard-link").href = `${location.pathname.replace(/\/$/, "")}/dashboard`;
    $("dashboard-link").hidden = false;
  }, () => {});
  const progress = await getJSON(`${api}/me`);
  showProgress(progress);
  await openViewer(me);
  const button = $("take-part");
  if (project.status !== "active") {
    $("intro-progress").textContent += ` · this project is ${project.status}`;
  } else {
    button.disabled = false;
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    say("");
    try {
      if (progress.tutorial_done) {
        if (heldSource) show("task");  // the viewer shows the task this session holds already: at once
        await startTasks();
      } else {
        await runTutorial();
      }
    } catch (error) {
      say(`Could not start: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
} catch (error) {
  say(`Could not open the project: ${error.message}`);
  $("title").textContent = "Project unavailable";
}
