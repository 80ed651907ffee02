// The Ops Console: signs in with a bearer token kept in this tab's session
// storage, then polls the service's own routes and updates the page in
// place (rows are keyed and only changed text is written, so a refresh
// never flashes). Every action goes through the public HTTP routes.

import { ApiError, call, claimsOf } from './api.js';

const TOKEN_KEY = 'ledger-console-token';
const REFRESH_MS = 3000;
const BUSY_REFRESH_MS = 1000;

const $ = (id) => document.getElementById(id);

const session = {
  token: null,
  operator: false,
  resync: false,
  timer: null,
  generation: 0,
  replaysRunning: false,
  resyncJob: null,
};

// ------------------------------------------------------------ small helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

function setAttr(node, name, value) {
  const text = String(value);
  if (node.getAttribute(name) !== text) node.setAttribute(name, text);
}

function setBadge(node, text, kind) {
  setText(node, text);
  const className = `badge badge-${kind || text}`;
  if (node.className !== className) node.className = className;
}

const number = new Intl.NumberFormat();
const fmt = (n) => number.format(n);

function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  if (seconds < 1) return 'under a second';
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function showNotice(text, kind = 'error') {
  const notice = $('notice');
  setText(notice, text);
  notice.className = `notice notice-${kind}`;
  notice.hidden = false;
}

function clearNotice() {
  $('notice').hidden = true;
}

function explain(error) {
  return error instanceof ApiError ? error.describe() : String(error);
}

// ------------------------------------------------------------ confirmation

/** Asks in a modal dialog; answers {ok, reason}. */
function confirmAction(text, { withReason = false, okLabel = 'Confirm' } = {}) {
  const dialog = $('confirm');
  const opener = document.activeElement;
  setText($('confirm-text'), text);
  setText($('confirm-ok'), okLabel);
  $('confirm-reason-field').hidden = !withReason;
  $('confirm-reason').value = '';
  return new Promise((resolve) => {
    const finish = (ok) => {
      $('confirm-ok').removeEventListener('click', onOk);
      $('confirm-cancel').removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      if (opener && opener.focus) opener.focus();
      resolve({ ok, reason: $('confirm-reason').value.trim() });
    };
    const onOk = () => finish(true);
    const onCancel = (event) => {
      if (event) event.preventDefault();
      finish(false);
    };
    $('confirm-ok').addEventListener('click', onOk);
    $('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    (withReason ? $('confirm-reason') : $('confirm-cancel')).focus();
  });
}

/** Runs an action from `button` after a confirmation, then refreshes. */
async function act(button, question, run, options = {}) {
  const { ok, reason } = await confirmAction(question, options);
  if (!ok) return;
  button.disabled = true;
  try {
    const result = await run(reason);
    showNotice(options.done ? options.done(result) : 'Done.', 'ok');
  } catch (error) {
    if (!handleAuthFailure(error)) showNotice(`The action failed. ${explain(error)}`);
  } finally {
    button.disabled = false;
  }
  refreshSoon();
}

// ------------------------------------------------------------ sign in and out

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get('token');
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    // The token leaves the address bar (and the tab's history) at once.
    history.replaceState(null, '', location.pathname + location.search);
  }
}

/** Forgets every row drawn for the previous token (its controls were its role's). */
function forgetRows() {
  for (const map of [projectionRows, replayItems, agencyRows]) {
    for (const entry of map.values()) (entry.row || entry.node).remove();
    map.clear();
  }
  watchedReplays.clear();
  session.replaysRunning = false;
  session.resyncJob = null;
}

function showLogin() {
  clearTimeout(session.timer);
  session.generation += 1;
  session.token = null;
  forgetRows();
  $('dashboard').hidden = true;
  $('login').hidden = false;
  $('who').hidden = true;
  $('sign-out').hidden = true;
  $('token-input').value = '';
  $('token-input').focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
  if (message) showNotice(message);
  else clearNotice();
}

/** A refused token ends the session with a clear message; answers whether it did. */
function handleAuthFailure(error) {
  if (!(error instanceof ApiError)) return false;
  if (error.status === 401) {
    signOut(
      `This token was refused: it is not valid for this service or has expired. ${error.describe()}. Paste a valid operator or agency admin token.`,
    );
    return true;
  }
  if (error.status === 403 && ['AGENCY_SUSPENDED'].includes(error.code)) {
    signOut(`This token's agency is suspended. ${error.describe()}`);
    return true;
  }
  return false;
}

async function signIn(token) {
  clearNotice();
  try {
    await call('GET', '/ops/projections', { token });
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (!handleAuthFailure(error)) {
      const why =
        error instanceof ApiError && error.status === 403
          ? 'This token may not see the Ops Console: it needs an operator or an agency admin token.'
          : 'Could not sign in.';
      signOut(`${why} ${explain(error)}`);
    }
    return;
  }
  // Asks the server whether this is an operator, unless the token itself
  // names another role (the probe's 403 would only be noise then).
  const role = claimsOf(token).role;
  let operator = false;
  if (typeof role !== 'string' || role === 'operator') {
    try {
      await call('GET', '/ops/agencies?limit=1', { token });
      operator = true;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 403)) {
        showNotice(`Could not tell whether this is an operator token. ${explain(error)}`);
      }
    }
  }
  let resync = false;
  if (operator) {
    try {
      const openapi = await call('GET', '/openapi.json');
      resync = Boolean(openapi && openapi.paths && openapi.paths['/ops/resync']);
    } catch {
      resync = false;
    }
  }
  Object.assign(session, { token, operator, resync, resyncJob: null });
  session.generation += 1;
  describeCaller(token, operator);
  document.body.classList.toggle('is-operator', operator);
  $('agencies').hidden = !operator;
  $('resync').hidden = !(operator && resync);
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('sign-out').hidden = false;
  $('main').focus();
  refreshLoop(session.generation);
}

function describeCaller(token, operator) {
  const claims = claimsOf(token);
  const name = claims.sub ? `${claims.sub}, ` : '';
  const role = operator
    ? 'operator'
    : `agency admin${claims.agency_id ? ` of ${claims.agency_id}` : ''} (read-only)`;
  setText($('who'), `Signed in: ${name}${role}`);
  $('who').hidden = false;
}

// ------------------------------------------------------------ refreshing

async function refreshLoop(generation) {
  if (generation !== session.generation) return;
  await refresh(generation);
  if (generation !== session.generation) return;
  const busy = session.replaysRunning || session.resyncJob;
  session.timer = setTimeout(() => refreshLoop(generation), busy ? BUSY_REFRESH_MS : REFRESH_MS);
}

function refreshSoon() {
  clearTimeout(session.timer);
  refreshLoop(session.generation);
}

async function refresh(generation) {
  const token = session.token;
  const jobs = [
    loadHealth(),
    call('GET', '/ops/projections', { token }).then(renderProjections),
    call('GET', '/ops/current-commit', { token }).then(renderCommit),
  ];
  if (session.operator) {
    jobs.push(loadReplays(token));
    jobs.push(call('GET', '/ops/agencies?limit=500', { token }).then(renderAgencies));
    if (session.resyncJob) jobs.push(loadResync(token));
  }
  const results = await Promise.allSettled(jobs);
  if (generation !== session.generation) return;
  const failures = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  if (failures.some(handleAuthFailure)) return;
  const line = $('refresh-state');
  if (failures.length) {
    setText(line, `Last refresh ${new Date().toLocaleTimeString()}: ${explain(failures[0])}`);
    line.classList.add('refresh-failed');
  } else {
    setText(line, `Refreshed ${new Date().toLocaleTimeString()}; updates every few seconds.`);
    line.classList.remove('refresh-failed');
  }
}

async function loadHealth() {
  const checked = new Date().toLocaleTimeString();
  try {
    const health = await call('GET', '/health/ready');
    setBadge($('health-status'), health.status);
    setBadge($('health-db'), health.db);
    setBadge($('health-nats'), health.nats);
  } catch (error) {
    // 503 DATABASE_UNAVAILABLE is an answer here, not a failure of the page.
    if (error instanceof ApiError && error.status === 503) {
      setBadge($('health-status'), 'unavailable', 'failed');
      setBadge($('health-db'), 'down', 'failed');
      setBadge($('health-nats'), 'unknown', 'unknown');
    } else {
      throw error;
    }
  } finally {
    setText($('health-checked'), checked);
  }
}

function renderCommit(commit) {
  setText($('commit-sha'), (commit.commit_sha || '').slice(0, 12) || '—');
  setAttr($('commit-sha'), 'title', commit.commit_sha || '');
  setText($('commit-version'), commit.version || '—');
  setText($('commit-built'), when(commit.built_at));
  setText($('commit-started'), when(commit.started_at));
}

// ------------------------------------------------------------ projections

const projectionRows = new Map();
/** The read models that replay and parked retry work on (the publisher's
 * checkpoint is listed with them but is no read model). */
const REBUILDABLE = ['inventory', 'views', 'audit'];

function projectionRow(name) {
  const cells = {
    name: el('th', { scope: 'row' }, name),
    position: el('td', { class: 'num', 'data-label': 'Position' }),
    head: el('td', { class: 'num', 'data-label': 'Head' }),
    lagText: el('span', { class: 'lag-number' }),
    lagBar: el('progress', { max: '1', value: '1', 'aria-label': `${name}: share of the log applied` }),
    status: el('span', { class: 'badge' }),
    parkedCount: el('span'),
    parkedList: el('ul', { class: 'parked' }),
    error: el('td', { class: 'error-text', 'data-label': 'Last error' }),
    actions: el('td', { class: 'operator-only actions' }),
  };
  cells.lag = el('td', { class: 'lag', 'data-label': 'Lag' }, cells.lagText, cells.lagBar);
  cells.parked = el('td', { 'data-label': 'Parked' }, cells.parkedCount, cells.parkedList);
  if (session.operator && REBUILDABLE.includes(name)) {
    cells.actions.append(
      el('button', {
        type: 'button',
        class: 'replay',
        'aria-label': `Replay ${name}`,
        onclick: (event) =>
          act(
            event.currentTarget,
            `Rebuild the ${name} projection from position 0? Reads keep working; the rebuilt copy is swapped in when it has caught up.`,
            async () => {
              const started = await call('POST', `/ops/projections/${encodeURIComponent(name)}/replay`, { token: session.token, body: {} });
              watchedReplays.add(name);
              session.replaysRunning = true;
              return started;
            },
            { okLabel: 'Start replay', done: () => `Replay of ${name} started.` },
          ),
      }, 'Replay'),
      el('button', {
        type: 'button',
        class: 'retry',
        'aria-label': `Retry the parked events of ${name}`,
        onclick: (event) =>
          act(
            event.currentTarget,
            `Apply the parked events of ${name} again? What still fails stays parked.`,
            () => call('POST', `/ops/projections/${encodeURIComponent(name)}/parked/retry`, { token: session.token, body: {} }),
            {
              okLabel: 'Retry parked',
              done: (r) => `Retried ${name}: ${(r.released || []).length} released, ${(r.still_parked || []).length} still parked.`,
            },
          ),
      }, 'Retry parked'),
    );
  }
  const row = el('tr', { 'data-projection': name }, cells.name, cells.position, cells.head, cells.lag,
    el('td', { 'data-label': 'Status' }, cells.status), cells.parked, cells.error, cells.actions);
  return { row, cells, parkedKey: '' };
}

function renderProjections(list) {
  const body = $('projection-rows');
  const seen = new Set();
  for (const p of list) {
    seen.add(p.name);
    let entry = projectionRows.get(p.name);
    if (!entry) {
      entry = projectionRow(p.name);
      projectionRows.set(p.name, entry);
      body.append(entry.row);
    }
    const { cells } = entry;
    setText(cells.position, fmt(p.position));
    setText(cells.head, fmt(p.head_position));
    setText(cells.lagText, fmt(p.lag));
    setAttr(cells.lagBar, 'max', Math.max(p.head_position, 1));
    setAttr(cells.lagBar, 'value', p.head_position > 0 ? p.position : 1);
    setBadge(cells.status, p.status);
    const parked = p.parked || [];
    setText(cells.parkedCount, parked.length ? `${parked.length} parked` : 'none');
    const key = JSON.stringify(parked);
    if (key !== entry.parkedKey) {
      entry.parkedKey = key;
      cells.parkedList.replaceChildren(...parked.map((item) => el('li', {},
        `property ${item.property_id} (agency ${item.agency_id}) at position ${fmt(item.position)}`
        + (item.error ? `: ${item.error}` : '')
        + ` since ${when(item.parked_at)}`)));
    }
    setText(cells.error, p.last_error || '—');
    entry.row.dataset.status = p.status;
  }
  for (const [name, entry] of projectionRows) {
    if (!seen.has(name)) {
      entry.row.remove();
      projectionRows.delete(name);
    }
  }
}

// ------------------------------------------------------------ replays

const replayItems = new Map();

/** Projections whose replay this page shows: one started here, one that
 * is replaying now, or one already on show (until the page is left). */
const watchedReplays = new Set();

async function loadReplays(token) {
  for (const [name, entry] of projectionRows) {
    if (entry.row.dataset.status === 'replaying') watchedReplays.add(name);
  }
  const names = [...watchedReplays];
  const progress = await Promise.all(names.map((name) =>
    call('GET', `/ops/projections/${encodeURIComponent(name)}/replay`, { token }).catch((error) => {
      if (error instanceof ApiError && error.status === 404) return null;
      throw error;
    })));
  session.replaysRunning = progress.some((p) => p && (p.state === 'running' || p.state === 'swapping'));
  names.forEach((name, index) => renderReplay(name, progress[index]));
}

function renderReplay(name, progress) {
  let item = replayItems.get(name);
  if (!progress) {
    if (item) {
      item.node.remove();
      replayItems.delete(name);
    }
    return;
  }
  if (!item) {
    const bar = el('progress', { max: '1', value: '0', 'aria-label': `Replay of ${name}` });
    const text = el('span', { class: 'replay-text' });
    const title = el('strong', {}, `Replay of ${name}`);
    item = { node: el('li', { 'data-replay': name }, title, bar, text), bar, text };
    replayItems.set(name, item);
    $('replays').append(item.node);
  }
  const total = Math.max(progress.total, 0);
  const processed = Math.min(progress.processed, total);
  const finished = progress.state === 'done';
  setAttr(item.bar, 'max', Math.max(total, 1));
  setAttr(item.bar, 'value', finished ? Math.max(total, 1) : processed);
  const share = total > 0 ? Math.floor((processed / total) * 100) : 100;
  let text;
  if (progress.state === 'running') {
    const rate = progress.events_per_sec || 0;
    const eta = rate > 0 ? duration((total - processed) / rate) : '—';
    text = `running: ${fmt(processed)} of ${fmt(total)} events (${share}%), ${fmt(Math.round(rate))} events/s, about ${eta} left`;
  } else if (progress.state === 'swapping') {
    text = `caught up (${fmt(processed)} events); swapping in`;
  } else if (finished) {
    text = `done: ${fmt(total)} events rebuilt and swapped in at ${when(progress.finished_at)}`;
  } else {
    text = `${progress.state}${progress.error ? `: ${progress.error}` : ''} (${fmt(processed)} of ${fmt(total)} events)`;
  }
  setText(item.text, text);
  item.node.dataset.state = progress.state;
}

// ------------------------------------------------------------ agencies

const agencyRows = new Map();

function featureButton(agency, feature, label) {
  const button = el('button', { type: 'button', class: 'toggle', 'data-feature': feature });
  button.addEventListener('click', () => {
    const current = agencyRows.get(agency).data.features[feature];
    const wanted = !current;
    act(
      button,
      `Turn ${label} ${wanted ? 'on' : 'off'} for ${agencyName(agencyRows.get(agency).data)}?`,
      () => call('PUT', `/ops/agencies/${agency}/features`, { token: session.token, body: { [feature]: wanted } }),
      { okLabel: `Turn ${wanted ? 'on' : 'off'}`, done: () => `${label} is ${wanted ? 'on' : 'off'}.` },
    );
  });
  return button;
}

function agencyName(agency) {
  return agency.name ? `${agency.name} (${agency.id})` : `agency ${agency.id}`;
}

function agencyRow(agency) {
  const cells = {
    name: el('span', { class: 'agency-name' }),
    id: el('code', { class: 'agency-id' }, agency.id),
    status: el('span', { class: 'badge' }),
    reason: el('span', { class: 'reason' }),
    icalExport: featureButton(agency.id, 'ical_export', 'iCal export'),
    icalImport: featureButton(agency.id, 'ical_import', 'iCal import'),
    lifecycle: el('button', { type: 'button', class: 'lifecycle' }),
  };
  cells.lifecycle.addEventListener('click', () => {
    const data = agencyRows.get(agency.id).data;
    const suspend = data.status !== 'suspended';
    act(
      cells.lifecycle,
      suspend
        ? `Suspend ${agencyName(data)}? Its tokens get 403 AGENCY_SUSPENDED everywhere within 2 s.`
        : `Reinstate ${agencyName(data)}?`,
      (reason) => call('POST', `/ops/agencies/${data.id}/${suspend ? 'suspend' : 'reinstate'}`, {
        token: session.token,
        body: reason ? { reason } : {},
      }),
      {
        withReason: true,
        okLabel: suspend ? 'Suspend' : 'Reinstate',
        done: () => `${agencyName(data)} is ${suspend ? 'suspended' : 'reinstated'}.`,
      },
    );
  });
  const row = el('tr', { 'data-agency': agency.id },
    el('th', { scope: 'row' }, cells.name, el('br'), cells.id),
    el('td', { 'data-label': 'Status' }, cells.status, ' ', cells.reason),
    el('td', { class: 'features', 'data-label': 'Features' }, cells.icalExport, cells.icalImport),
    el('td', { class: 'actions' }, cells.lifecycle));
  return { row, cells, data: agency };
}

function renderAgencies(page) {
  const body = $('agency-rows');
  const seen = new Set();
  for (const agency of page.items || []) {
    seen.add(agency.id);
    let entry = agencyRows.get(agency.id);
    if (!entry) {
      entry = agencyRow(agency);
      agencyRows.set(agency.id, entry);
      body.append(entry.row);
    }
    entry.data = agency;
    const { cells } = entry;
    setText(cells.name, agency.name || '(no name)');
    setBadge(cells.status, agency.status);
    setText(cells.reason, agency.reason || '');
    for (const [button, feature, label] of [
      [cells.icalExport, 'ical_export', 'iCal export'],
      [cells.icalImport, 'ical_import', 'iCal import'],
    ]) {
      const on = Boolean(agency.features && agency.features[feature]);
      setText(button, `${label}: ${on ? 'on' : 'off'}`);
      setAttr(button, 'aria-pressed', on);
    }
    const suspended = agency.status === 'suspended';
    setText(cells.lifecycle, suspended ? 'Reinstate' : 'Suspend');
    setAttr(cells.lifecycle, 'class', suspended ? 'lifecycle' : 'lifecycle danger');
    setAttr(cells.lifecycle, 'aria-label', `${suspended ? 'Reinstate' : 'Suspend'} ${agencyName(agency)}`);
    entry.row.dataset.status = agency.status;
  }
  for (const [id, entry] of agencyRows) {
    if (!seen.has(id)) {
      entry.row.remove();
      agencyRows.delete(id);
    }
  }
  $('agencies-more').hidden = !page.next_cursor;
}

// ------------------------------------------------------------ resync

function startResync() {
  const agency = $('resync-agency').value.trim();
  const property = $('resync-property').value.trim();
  const body = {};
  if (agency) body.agency_id = agency;
  if (property) body.property_id = property;
  const scope = property ? `property ${property}` : agency ? `every property of agency ${agency}` : 'every property';
  act(
    $('resync-start'),
    `Publish an availability snapshot of ${scope}?`,
    async () => {
      const started = await call('POST', '/ops/resync', { token: session.token, body });
      session.resyncJob = started && (started.job_id || started.id);
      $('resync-progress').hidden = !session.resyncJob;
      return started;
    },
    { okLabel: 'Start resync', done: () => `Resync of ${scope} started.` },
  );
}

async function loadResync(token) {
  const job = await call('GET', `/ops/resync/${encodeURIComponent(session.resyncJob)}`, { token });
  const total = Math.max(job.total || 0, 0);
  const processed = Math.min(job.processed || 0, total);
  const finished = Boolean(job.finished_at);
  setAttr($('resync-bar'), 'max', Math.max(total, 1));
  setAttr($('resync-bar'), 'value', finished ? Math.max(total, 1) : processed);
  setText($('resync-text'), `${job.state}: ${fmt(processed)} of ${fmt(total)} properties`
    + (finished ? `, finished ${when(job.finished_at)}` : ''));
  if (finished) session.resyncJob = null;
}

// ------------------------------------------------------------ start

function start() {
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) {
      showNotice('Paste a token first.');
      $('token-input').focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    signIn(token);
  });
  $('sign-out').addEventListener('click', () => signOut());
  $('resync-start').addEventListener('click', startResync);
  takeTokenFromFragment();
  const stored = sessionStorage.getItem(TOKEN_KEY);
  if (stored) signIn(stored);
  else showLogin();
}

start();
