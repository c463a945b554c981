// The transcode-worker dashboard: polls the JSON API and draws the page.
//
// Every value from the farm is written with DOM text nodes (el(), text),
// never parsed as markup: a file name or an error sentence holding
// "<script>" shows as those characters. The page's Content-Security-Policy
// allows no inline script either.
'use strict';

const TOKEN_KEY = 'transcode-dashboard-token';
const STATES = ['queued', 'waiting', 'running', 'completed', 'failed', 'dead', 'cancelled'];

const view = {
  about: null,
  workers: [],
  live: new Map(),        // job id -> its running attempt, from the workers
  deadTotal: null,        // dead letters counted at the last refresh
  deadFetchedAt: 0,
  jobId: null,            // the job whose page is open
  busy: false,
};

// ---------------------------------------------------------------- helpers

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key.startsWith('data-')) node.dataset[camel(key.slice(5))] = String(value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function camel(name) {
  return name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

function $(id) {
  return document.getElementById(id);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function secs(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  if (s < 10) return `${Math.max(0, s).toFixed(1)}s`;
  s = Math.round(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), r = s % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${r}s`;
  return `${r}s`;
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function time(at) {
  if (!at) return '–';
  const t = new Date(at);
  if (isNaN(t)) return at;
  const today = new Date().toDateString() === t.toDateString();
  return today ? t.toLocaleTimeString() : t.toLocaleString();
}

function badge(state) {
  return el('span', { class: `badge state-${STATES.includes(state) || ['idle', 'busy', 'disconnected'].includes(state) ? state : 'other'}`, text: state });
}

function jobLink(id) {
  return el('a', { href: `#job/${encodeURIComponent(id)}`, class: 'job-link', 'data-job-link': id }, el('code', { text: id }));
}

function bar(percent) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const fill = el('span', { class: 'bar-fill' });
  fill.style.width = `${p}%`;
  return el('span', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': p.toFixed(1) }, fill);
}

function speedText(job) {
  if (job.speed !== undefined && job.speed !== null) return `${job.speed.toFixed(2)}×`;
  if (job.bytes_per_sec !== undefined && job.bytes_per_sec !== null) return `${bytes(job.bytes_per_sec)}/s`;
  return null;
}

function say(text, kind) {
  const box = $('message');
  box.hidden = false;
  box.className = `message ${kind || 'info'}`;
  box.replaceChildren(el('span', { text }), el('button', { type: 'button', class: 'quiet', 'aria-label': 'dismiss', text: '×' }));
  box.querySelector('button').addEventListener('click', () => { box.hidden = true; });
}

// ---------------------------------------------------------------- the API

async function get(path) {
  const response = await fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok && response.status !== 404) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return { status: response.status, body };
}

// A POST of an action, with the token; says what came of it.
async function act(path, body, done) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let response, answer = null;
  try {
    response = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body || {}), cache: 'no-store' });
    try { answer = await response.json(); } catch (_) { answer = null; }
  } catch (e) {
    say(`The dashboard did not answer: ${e.message}`, 'error');
    return null;
  }
  if (!response.ok) {
    const why = answer && answer.error ? answer.error : response.statusText;
    say(`Refused (${response.status}): ${why}`, 'error');
    return null;
  }
  say(done(answer), 'ok');
  refresh();
  return answer;
}

function cancelJob(id) {
  return act(`/api/jobs/${encodeURIComponent(id)}/cancel`, {}, (a) => `${a.job_id}: ${a.message}`);
}

function requeue(id) {
  return act(`/api/dead-letters/${encodeURIComponent(id)}/requeue`, {}, (a) => `${a.job_id || a.id}: back in ${a.queue}`);
}

function actionButton(label, onClick, attrs) {
  if (!view.about || !view.about.actions) return null;
  const button = el('button', Object.assign({ type: 'button', class: 'action' }, attrs || {}), label);
  button.addEventListener('click', (event) => {
    event.preventDefault();
    onClick();
  });
  return button;
}

// ---------------------------------------------------------------- drawing

function drawWorkers(workers) {
  view.workers = workers;
  view.live = new Map();
  for (const w of workers) for (const j of w.jobs) view.live.set(j.job_id, Object.assign({ worker: w.worker }, j));
  $('workers-count').textContent = `${workers.length}`;
  const cards = workers.map((w) => {
    const caps = w.capabilities;
    const encoders = caps ? caps.encoders.filter((e) => !e.startsWith('avenc_')).map((e) => (caps.hardware.includes(e) ? `${e} (hw)` : e)) : [];
    const libav = caps ? caps.encoders.filter((e) => e.startsWith('avenc_')).length : 0;
    if (libav > 0) encoders.push(`+${libav} avenc_*`);
    const jobs = w.jobs.map((j) => {
      const extra = [j.phase, speedText(j), j.eta_secs !== undefined && j.eta_secs !== null ? `ETA ${secs(j.eta_secs)}` : null, `attempt ${j.attempt}`].filter(Boolean).join(' · ');
      return el('div', { class: 'running', 'data-job': j.job_id },
        el('div', { class: 'running-head' }, jobLink(j.job_id), el('span', { class: 'pct', 'data-progress': j.progress, text: `${j.progress.toFixed(1)}%` }),
          actionButton('Cancel', () => cancelJob(j.job_id), { 'data-cancel': j.job_id })),
        bar(j.progress),
        el('div', { class: 'muted small', text: extra }));
    });
    return el('article', { class: `card worker-${w.state}`, 'data-worker': w.worker },
      el('div', { class: 'card-head' }, el('strong', { class: 'worker-name', text: w.worker }), badge(w.state)),
      el('div', { class: 'muted small', text: `${w.host} · pid ${w.pid} · v${w.version} · up ${secs(w.uptime_secs)}` }),
      jobs.length ? jobs : el('div', { class: 'idle muted', text: 'no job' }),
      el('dl', { class: 'facts' },
        el('dt', { text: 'done' }), el('dd', { text: w.jobs_completed }),
        el('dt', { text: 'failed' }), el('dd', { text: w.jobs_failed }),
        el('dt', { text: 'retried' }), el('dd', { text: w.attempts_retried }),
        el('dt', { text: 'slots' }), el('dd', { text: w.concurrency })),
      caps ? el('div', { class: 'caps small' },
        el('span', { text: `${caps.cores} cores` }),
        caps.labels.length ? el('span', { text: `labels ${caps.labels.join(', ')}` }) : null,
        el('span', { text: `scratch ${bytes(caps.scratch_free_bytes)} free` }),
        caps.hardware.length ? el('span', { class: 'hw', text: `hardware ${caps.hardware.join(', ')}` }) : null,
        el('details', { class: 'encoders' }, el('summary', { text: `${caps.encoders.length} encoders, ${caps.muxers.length} muxers` }),
          el('div', { text: encoders.join(' ') }))) : null);
  });
  $('workers').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted', text: 'No worker answered.' })]));
}

function tile(label, value, attrs, hint) {
  return el('div', Object.assign({ class: 'tile' }, attrs || {}),
    el('div', { class: 'tile-value', text: value === null || value === undefined ? '–' : value }),
    el('div', { class: 'tile-label', text: label }),
    hint ? el('div', { class: 'tile-hint muted', text: hint }) : null);
}

function drawQueues(q) {
  const tiles = q.jobs.map((j) => tile(`waiting · ${j.priority}`, j.messages, { 'data-queue': j.queue }, j.queue));
  tiles.push(tile('running', q.running, { 'data-tile': 'running' }));
  tiles.push(tile('dead letters', q.dead_letters.messages, { 'data-tile': 'dead', class: q.dead_letters.messages ? 'tile alert' : 'tile' }, q.dead_letters.queue));
  tiles.push(tile('webhooks pending', q.webhooks.pending, { 'data-tile': 'webhooks' }, q.webhooks.dead ? `${q.webhooks.dead} undeliverable` : q.webhooks.queue));
  const waiting = q.waiting_for_capability.reduce((n, w) => n + w.messages, 0) + (q.unplaced.messages || 0);
  tiles.push(tile('waiting for a capable worker', waiting, { 'data-tile': 'capability' }));
  $('queues').replaceChildren(...tiles);
  const rows = q.waiting_for_capability.map((w) => el('li', {}, el('code', { text: w.queue }), ` ${w.messages} waiting for ${w.requires}`));
  if (q.unplaced.messages) rows.push(el('li', {}, el('code', { text: q.unplaced.queue }), ` ${q.unplaced.messages} waited too long, being placed again`));
  $('capability-queues').replaceChildren(...(rows.length ? [el('ul', {}, rows)] : []));
  if (q.dead_letters.messages !== view.deadTotal || Date.now() - view.deadFetchedAt > 15000) {
    view.deadTotal = q.dead_letters.messages;
    refreshDeadLetters();
  }
}

function outcome(job) {
  const live = view.live.get(job.job_id);
  if (job.state === 'running' && live) {
    const extra = [live.phase, speedText(live), live.eta_secs !== undefined && live.eta_secs !== null ? `ETA ${secs(live.eta_secs)}` : null].filter(Boolean).join(' · ');
    return el('div', { class: 'progress-cell' },
      el('span', { class: 'pct', 'data-progress': live.progress, text: `${live.progress.toFixed(1)}%` }), bar(live.progress),
      el('span', { class: 'muted small', text: extra }));
  }
  switch (job.state) {
    case 'completed': return el('span', { text: `${bytes(job.output_size_bytes)} stored` });
    case 'dead': case 'failed': return el('span', { class: 'kind', text: job.error_kind || 'failed' });
    case 'waiting': return el('span', { text: job.waiting_for ? `needs ${job.waiting_for}` : 'waiting' });
    case 'running': return el('span', { text: job.phase || 'running' });
    default: return el('span', { class: 'muted', text: job.state });
  }
}

function drawJobs(jobs) {
  const rows = jobs.map((j) => el('tr', { 'data-job': j.job_id, 'data-state': j.state },
    el('td', {}, jobLink(j.job_id)),
    el('td', {}, badge(j.state)),
    el('td', {}, outcome(j)),
    el('td', { class: 'small', text: j.worker || '–' }),
    el('td', { class: 'num', text: secs(j.duration_secs) }),
    el('td', { class: 'small' }, j.output_keys.map((k) => el('div', {}, el('code', { text: k })))),
    el('td', { class: 'error small' }, j.error ? [el('strong', { text: j.error_kind || '' }), ' ', el('span', { text: j.error })] : ''),
    el('td', {}, ['queued', 'waiting', 'running', 'failed'].includes(j.state) ? actionButton('Cancel', () => cancelJob(j.job_id), { 'data-cancel': j.job_id }) : null)));
  $('jobs').tBodies[0].replaceChildren(...rows);
  $('jobs-empty').hidden = rows.length > 0;
}

function drawDeadLetters(answer) {
  $('dead-count').textContent = `${answer.total}`;
  const rows = answer.dead_letters.map((d) => {
    const job = d.job || {};
    const history = d.attempt_history.length
      ? el('details', {}, el('summary', { text: `${d.attempt_history.length} line(s) of history` }), el('ol', {}, d.attempt_history.map((line) => el('li', { text: line }))))
      : null;
    return el('tr', { 'data-dead': d.id },
      el('td', {}, d.job_id ? jobLink(d.job_id) : el('code', { text: d.id })),
      el('td', { class: 'small', text: time(d.failed_at) }),
      el('td', { class: 'error' }, el('strong', { text: d.error_kind || 'unknown' }), ' ', el('span', { class: 'reason', text: d.error || '' }), history),
      el('td', { class: 'num', text: d.attempts === null || d.attempts === undefined ? '–' : d.attempts }),
      el('td', { class: 'small' }, job.input_key ? el('code', { text: job.input_key }) : '–'),
      el('td', {}, actionButton('Requeue', () => requeue(d.id), { 'data-requeue': d.id, title: `back into ${d.requeue_to}, history kept` })));
  });
  $('dead-letters').tBodies[0].replaceChildren(...rows);
  $('dead-empty').hidden = rows.length > 0;
}

function fact(label, value) {
  if (value === null || value === undefined || value === '') return [];
  return [el('dt', { text: label }), el('dd', {}, value instanceof Node ? value : String(value))];
}

function drawJob(id, status, job) {
  $('job-id').textContent = id;
  if (status === 404) {
    $('job').replaceChildren(el('p', { class: 'muted', text: 'The farm has no record of this job.' }));
    return;
  }
  const live = job.live;
  const head = el('div', { class: 'job-head' }, badge(job.state),
    job.cancel_requested ? el('span', { class: 'badge muted', text: 'cancel requested' }) : null,
    !['completed', 'dead', 'cancelled'].includes(job.state) ? actionButton('Cancel this job', () => cancelJob(id), { id: 'job-cancel' }) : null);
  const progress = live ? el('div', { class: 'job-progress', 'data-job': id },
    el('span', { class: 'pct', 'data-progress': live.progress, text: `${live.progress.toFixed(1)}% ${live.phase}` }), bar(live.progress),
    el('span', { class: 'muted small', text: [speedText(live), live.eta_secs !== undefined && live.eta_secs !== null ? `ETA ${secs(live.eta_secs)}` : null].filter(Boolean).join(' · ') })) : null;
  const facts = el('dl', { class: 'facts wide' },
    fact('input', el('code', { text: job.input_key })),
    fact('output', job.output_keys.length ? el('span', {}, job.output_keys.map((k) => el('code', { text: k }))) : null),
    fact('priority', job.priority),
    fact('worker', job.worker),
    fact('attempt', job.attempt || null),
    fact('stored', job.output_size_bytes !== undefined ? `${bytes(job.output_size_bytes)}${job.duration_seconds ? `, ${job.duration_seconds.toFixed(2)} s of media` : ''}` : null),
    fact('error', job.error ? el('span', { class: 'error' }, el('strong', { text: job.error_kind || '' }), ' ', el('span', { text: job.error })) : null),
    fact('waiting for', job.waiting_for),
    fact('submitted', job.submitted_at ? time(job.submitted_at) : null),
    fact('started', job.started_at ? time(job.started_at) : null),
    fact('ended', job.ended_at ? time(job.ended_at) : null),
    fact('duration', job.duration_secs !== null && job.duration_secs !== undefined ? secs(job.duration_secs) : null));
  const attempts = el('table', { class: 'attempts' },
    el('thead', {}, el('tr', {}, ['#', 'worker', 'started', 'ended', 'outcome', 'error'].map((h) => el('th', { text: h })))),
    el('tbody', {}, job.attempts.map((a) => el('tr', {},
      el('td', { class: 'num', text: a.attempt }), el('td', { class: 'small', text: a.worker }),
      el('td', { class: 'small', text: time(a.started_at) }), el('td', { class: 'small', text: time(a.ended_at) }),
      el('td', { text: a.outcome || 'running' }),
      el('td', { class: 'error small' }, a.error ? [el('strong', { text: a.error_kind || '' }), ' ', el('span', { text: a.error })] : '')))));
  const events = el('ol', { class: 'events' }, job.events.slice().reverse().map((e) => el('li', {},
    el('span', { class: 'small muted', text: time(e.at) }), ' ', badge(e.state), ' ', el('span', { text: e.text }))));
  $('job').replaceChildren(head, progress, facts,
    el('h3', { text: `Attempts (${job.attempts.length})` }), job.attempts.length ? attempts : el('p', { class: 'muted', text: 'none yet' }),
    el('h3', { text: 'Events, newest first' }), events);
}

// ---------------------------------------------------------------- refreshing

function jobsQuery() {
  const params = new URLSearchParams();
  const state = $('jobs-state').value;
  const q = $('jobs-search').value.trim();
  if (state) params.set('state', state);
  if (q) params.set('q', q);
  params.set('limit', '50');
  return `/api/jobs?${params}`;
}

async function refreshDeadLetters() {
  view.deadFetchedAt = Date.now();
  try {
    const { body } = await get('/api/dead-letters?limit=20');
    drawDeadLetters(body);
  } catch (e) {
    $('dead-count').textContent = '?';
  }
}

async function refreshJob() {
  const id = view.jobId;
  if (!id) return;
  const { status, body } = await get(`/api/jobs/${encodeURIComponent(id)}`);
  if (view.jobId === id) drawJob(id, status, body);
}

async function refresh() {
  if (view.busy) return;
  view.busy = true;
  const problems = [];
  const watch = (what, promise) => promise.catch((e) => problems.push(`${what}: ${e.message}`));
  // Each part is drawn as soon as its answer comes.
  const workers = watch('workers', get('/api/workers').then(({ body }) => drawWorkers(body.workers)));
  await Promise.all([
    workers,
    watch('queues', get('/api/queues').then(({ body }) => drawQueues(body))),
    // The jobs' live progress comes from the workers: draw them after.
    watch('jobs', get(jobsQuery()).then(async ({ body }) => { await workers; drawJobs(body.jobs); })),
    watch('job', workers.then(refreshJob)),
  ]);
  view.busy = false;
  const status = $('status');
  if (problems.length) {
    status.textContent = problems.join(' · ');
    status.className = 'status error';
  } else {
    status.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    status.className = 'status muted';
  }
}

function loop() {
  const started = Date.now();
  refresh().finally(() => {
    const every = (view.about && view.about.refresh_ms) || 1000;
    setTimeout(loop, Math.max(0, every - (Date.now() - started)));
  });
}

function openJobFromHash() {
  const match = /^#job\/(.+)$/.exec(location.hash);
  view.jobId = match ? decodeURIComponent(match[1]) : null;
  $('job-section').hidden = !view.jobId;
  if (view.jobId) {
    $('job-id').textContent = view.jobId;
    $('job').replaceChildren(el('p', { class: 'muted', text: 'loading…' }));
    refreshJob().catch((e) => say(e.message, 'error'));
    $('job-section').scrollIntoView({ block: 'start' });
  }
}

// ---------------------------------------------------------------- set-up

function setUpActions(about) {
  $('read-only').hidden = about.actions;
  $('token-form').hidden = !about.actions;
  $('submit-section').hidden = !about.actions;
  $('token').value = token();
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    say($('token').value.trim() ? 'Token kept for this tab.' : 'No token: actions will be refused.', 'info');
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('token').value = '';
    say('Token forgotten.', 'info');
  });
  const presets = $('submit-preset');
  presets.replaceChildren(...about.presets.map((p) => el('option', { value: p.name, title: p.description, selected: p.name === about.default_preset }, p.name)));
  $('submit-priority').replaceChildren(...about.priorities.map((p) => el('option', { value: p, selected: p === 'normal' }, p)));
  $('submit-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const job = {
      input_key: $('submit-input').value.trim(),
      output_key: $('submit-output').value.trim(),
      preset: presets.value,
      priority: $('submit-priority').value,
    };
    const id = $('submit-job-id').value.trim();
    if (id) job.job_id = id;
    act('/api/jobs', job, (a) => `${a.job_id}: submitted to ${a.queue}`);
  });
}

async function start() {
  try {
    const { body } = await get('/api/about');
    view.about = body;
    $('version').textContent = `transcode-worker ${body.version}`;
    setUpActions(body);
  } catch (e) {
    say(`The dashboard did not answer: ${e.message}`, 'error');
  }
  $('jobs-state').addEventListener('change', refresh);
  $('jobs-search').addEventListener('input', refresh);
  $('jobs-filter').addEventListener('submit', (event) => { event.preventDefault(); refresh(); });
  $('job-close').addEventListener('click', (event) => { event.preventDefault(); history.replaceState(null, '', location.pathname); openJobFromHash(); });
  window.addEventListener('hashchange', openJobFromHash);
  openJobFromHash();
  loop();
}

document.addEventListener('DOMContentLoaded', start);
