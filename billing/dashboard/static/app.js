/*
 * moeserve billing dashboard. Plain ES2020: no framework, no build step, no eval.
 *
 * Ground rules:
 *  - The page holds no data of its own: everything comes from the billing JSON APIs, read
 *    with the token the user signs in with (kept in sessionStorage, nowhere else).
 *  - API data reaches the DOM only through textContent and DOM APIs, never parsed as
 *    markup: endpoint names and the like are tenant input. Text handed to Plotly (which reads a
 *    few HTML-like tags in labels) is escaped first.
 *  - Figures are shown exactly as the API wrote them (decimal strings); the page never does
 *    arithmetic on money or DBUs. Numbers are parsed only for chart geometry.
 */
'use strict';

(() => {
  const TOKEN_KEY = 'moeserve.billing.token';
  const BILLING = '/api/2.0/billing';
  const VIEWS = ['overview', 'series', 'pricing', 'endpoint', 'invoices', 'budgets'];
  const PRICING_TOP = 10; // endpoints compared on the pricing view
  const CONCURRENCY = 3; // estimate / budget-status requests in flight at once
  const DEFAULT_DAILY_OVER_DAYS = 7;
  const MAX_HOURLY_DAYS = 31;
  const MAX_RANGE_DAYS = 400;
  const AREA_OVER_POINTS = 3000; // more points than this: a stacked area, not bars
  const PAGE_ROWS = 500; // rows of a long table shown at once
  const DAY_MS = 86400000;
  const PLOTLY_SRC = '/billing/assets/plotly.min.js';
  const PLOTLY_CONFIG = { displaylogo: false, responsive: true };
  // The mode bar's camera saves SVG: a PNG is drawn from a blob: image, which the page's CSP
  // (img-src 'self' data:) blocks; an SVG needs no image load.
  const IMAGE_FORMAT = 'svg';
  const MODE_LABELS = {
    pay_per_token: 'pay-per-token',
    provisioned_throughput: 'provisioned throughput',
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers

  /** An element; props: text, className, dataset, or attributes. Children are nodes or
   * strings (appended as text nodes). */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'className') node.className = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of [].concat(children === undefined ? [] : children)) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function setText(id, value) {
    $(id).textContent = value === null || value === undefined ? '' : String(value);
  }

  /** Text for Plotly labels: Plotly reads <br>, <b>, <a href> and entities in them. */
  function plotlyText(value) {
    return String(value).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }

  const isAbort = (err) => Boolean(err) && err.name === 'AbortError';

  function abortError() {
    const err = new Error('superseded');
    err.name = 'AbortError';
    return err;
  }

  // ---------------------------------------------------------------- values

  const count = (n, noun) => `${n} ${noun}${n === 1 ? '' : 's'}`;
  const modeLabel = (mode) => MODE_LABELS[mode] || String(mode);
  const plain = (value) => (value === null || value === undefined ? '' : String(value));

  /** Exact comparison of two decimal strings (-1, 0, 1); null if either is not one. */
  function compareDecimals(a, b) {
    const pa = parseDecimal(a);
    const pb = parseDecimal(b);
    if (!pa || !pb) return null;
    if (pa.negative !== pb.negative) return pa.negative ? -1 : 1;
    const magnitude = compareMagnitudes(pa, pb);
    return pa.negative ? -magnitude : magnitude;
  }

  function parseDecimal(text) {
    const match = /^([+-])?(\d+)(?:\.(\d*))?$/.exec(String(text).trim());
    if (!match) return null;
    const whole = match[2].replace(/^0+/, '');
    const fraction = (match[3] || '').replace(/0+$/, '');
    const zero = whole === '' && fraction === '';
    return { negative: match[1] === '-' && !zero, whole, fraction };
  }

  function compareMagnitudes(a, b) {
    if (a.whole.length !== b.whole.length) return a.whole.length < b.whole.length ? -1 : 1;
    if (a.whole !== b.whole) return a.whole < b.whole ? -1 : 1;
    const width = Math.max(a.fraction.length, b.fraction.length);
    const fa = a.fraction.padEnd(width, '0');
    const fb = b.fraction.padEnd(width, '0');
    if (fa === fb) return 0;
    return fa < fb ? -1 : 1;
  }

  /** A chart height from an API decimal string (geometry only, never shown). */
  const height = (text) => {
    const value = Number.parseFloat(text);
    return Number.isFinite(value) ? value : 0;
  };

  /** An API time (ISO 8601, UTC) as Plotly's zone-less date text, in UTC. */
  function plotlyDate(text) {
    const when = new Date(text);
    if (Number.isNaN(when.getTime())) return String(text);
    return when.toISOString().slice(0, 19).replace('T', ' ');
  }

  // ---------------------------------------------------------------- dates (UTC days)

  const todayUtc = () => new Date().toISOString().slice(0, 10);
  const isDay = (text) =>
    /^\d{4}-\d{2}-\d{2}$/.test(text) && !Number.isNaN(Date.parse(`${text}T00:00:00Z`));

  function addDays(day, count) {
    const when = new Date(`${day}T00:00:00Z`);
    when.setUTCDate(when.getUTCDate() + count);
    return when.toISOString().slice(0, 10);
  }

  /** Days in [from, to], both included. */
  const daysIn = (from, to) =>
    Math.round((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / DAY_MS) + 1;

  function presetRange(preset) {
    const to = todayUtc();
    if (preset === 'mtd') return { from: `${to.slice(0, 8)}01`, to };
    return { from: addDays(to, 1 - Number(preset)), to };
  }

  function rangeProblem(from, to) {
    if (!isDay(from) || !isDay(to)) return 'Enter both dates, From and To.';
    if (to < from) return 'The To date must be on or after the From date.';
    if (daysIn(from, to) > MAX_RANGE_DAYS) {
      return `A range may span at most ${MAX_RANGE_DAYS} days.`;
    }
    return '';
  }

  // ---------------------------------------------------------------- state

  const session = { token: null, viewer: null, epoch: 0 };
  const filters = { workspace: '', from: '', to: '', granularity: 'DAY', groupBy: 'ENDPOINT' };
  const state = {
    view: 'overview',
    summary: null, // the BillingSummary shown
    summaryRange: null, // rangeKey() of that summary
    choices: [], // endpoints of the summary: {key, name, workspace, label}
    drill: null, // the chosen endpoint (a choice)
    drillStats: null,
    drillEstimate: null,
    pricing: new Map(), // choice key -> estimate outcome, for the pricing table
    pricingSelected: '',
    invoices: null,
    invoice: null, // InvoiceDetail shown
    line: null, // the line whose records are shown
    records: null,
    budgets: null, // [{budget, status | null, problem}]
  };
  const estimates = new Map(); // `${rangeKey}|${choice.key}` -> Promise<outcome>
  const loads = {}; // loader name -> {key, controller, epoch}

  const rangeKey = () => JSON.stringify([filters.workspace, filters.from, filters.to]);
  const summaryKey = () =>
    JSON.stringify([filters.workspace, filters.from, filters.to, filters.granularity, filters.groupBy]);

  function rangeParams() {
    return {
      start_time: `${filters.from}T00:00:00Z`,
      end_time: `${addDays(filters.to, 1)}T00:00:00Z`,
    };
  }

  const scopeParams = (workspace) => (workspace ? { workspace_id: workspace } : {});

  /** Claims loader `name` for `key`; null when that key is already loaded or loading. */
  function startLoad(name, key) {
    const current = loads[name];
    if (current && current.key === key && current.epoch === session.epoch) return null;
    if (current) current.controller.abort();
    const entry = { key, controller: new AbortController(), epoch: session.epoch };
    loads[name] = entry;
    return entry;
  }

  const isCurrent = (name, entry) => loads[name] === entry && entry.epoch === session.epoch;

  /** A failed load is retried the next time it is asked for. */
  function failed(name, entry) {
    if (loads[name] === entry) delete loads[name];
  }

  function forgetLoad(name) {
    if (loads[name]) {
      loads[name].controller.abort();
      delete loads[name];
    }
  }

  function resetLoads() {
    for (const name of Object.keys(loads)) forgetLoad(name);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.name = 'ApiError';
      this.status = status;
      this.code = code;
    }
  }

  async function errorOf(response) {
    let code = `HTTP_${response.status}`;
    let message = `The server answered HTTP ${response.status}.`;
    try {
      const body = await response.json();
      if (body && typeof body.message === 'string' && body.message) message = body.message;
      if (body && typeof body.error_code === 'string') code = body.error_code;
    } catch (_) {
      // not JSON: keep the status line
    }
    return new ApiError(response.status, code, message);
  }

  /** GET `path` with the token: JSON, or a Blob when `csv`. A 401 once signed in ends the
   * session (the token expired or was revoked). */
  async function api(path, options) {
    const { params = {}, csv = false, signal } = options || {};
    const epoch = session.epoch;
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
    }
    let response;
    try {
      response = await fetch(url, {
        headers: {
          Authorization: `Bearer ${session.token}`,
          Accept: csv ? 'text/csv' : 'application/json',
        },
        cache: 'no-store',
        credentials: 'omit',
        signal,
      });
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new ApiError(0, 'NETWORK_ERROR', 'The server could not be reached; try again.');
    }
    if (epoch !== session.epoch) throw abortError();
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401 && session.viewer && epoch === session.epoch) expire(error);
      throw error;
    }
    const body = csv ? await response.blob() : await response.json();
    if (epoch !== session.epoch) throw abortError();
    return body;
  }

  /** Runs `task` over `items`, at most `limit` at once. */
  async function eachLimited(items, limit, task, signal) {
    let next = 0;
    const worker = async () => {
      while (next < items.length && !(signal && signal.aborted)) {
        const index = next;
        next += 1;
        await task(items[index], index);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  }

  // ---------------------------------------------------------------- status, alerts

  function announce(text) {
    setText('status', text);
  }

  function showAlert(text) {
    setText('alert', text);
  }

  function clearAlert() {
    setText('alert', '');
  }

  function setBodyState(value) {
    document.body.dataset.state = value;
  }

  function setViewState(view, value) {
    $(view).dataset.viewState = value;
  }

  // ---------------------------------------------------------------- CSV

  function csvField(value) {
    const text = value === null || value === undefined ? '' : String(value);
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  /** RFC 4180: CRLF line ends, fields quoted when they hold a quote, a comma or a line end. */
  function csvText(header, rows) {
    return `${[header, ...rows].map((row) => row.map(csvField).join(',')).join('\r\n')}\r\n`;
  }

  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  function saveCsv(filename, header, rows) {
    saveBlob(new Blob([csvText(header, rows)], { type: 'text/csv;charset=utf-8' }), filename);
    announce(`Saved ${filename}.`);
  }

  async function saveApiCsv(table, path, params, filename) {
    table.problem('');
    table.button.disabled = true;
    try {
      saveBlob(await api(path, { params, csv: true }), filename);
      announce(`Saved ${filename}.`);
    } catch (err) {
      if (!isAbort(err)) table.problem(`The CSV could not be downloaded: ${err.message}`);
    } finally {
      table.button.disabled = false;
    }
  }

  const fileSafe = (text) => String(text).replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);

  function scopeSlug() {
    if (filters.workspace) return `workspace-${fileSafe(filters.workspace)}`;
    if (session.viewer && !session.viewer.is_account_admin) {
      return `workspace-${fileSafe(session.viewer.workspace_id)}`;
    }
    return 'all-workspaces';
  }

  const rangeSlug = () => `${filters.from}_to_${filters.to}`;

  // ---------------------------------------------------------------- tables

  /** A table in block `blockId`: caption, column headers, a Download CSV button (calling
   * `onCsv(table)`), a horizontally scrolling container, an error line. */
  function makeTable(blockId, caption, columns, onCsv) {
    const block = $(blockId);
    const name = blockId.replace(/-block$/, '');
    const captionId = `${name}-caption`;
    const tbody = el('tbody');
    const captionNode = el('caption', { id: captionId, text: caption });
    const table = el('table', { 'data-testid': `${name}-table` }, [
      captionNode,
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          columns.map((column) =>
            el('th', { scope: 'col', className: column.numeric ? 'num' : undefined, text: column.label }),
          ),
        ),
      ),
      tbody,
    ]);
    const hidden = el('span', { className: 'sr-only', text: ` of ${caption}` });
    const button = el(
      'button',
      { type: 'button', className: 'secondary csv-button', 'data-testid': `${name}-csv`, disabled: true },
      ['Download CSV', hidden],
    );
    const problem = el('p', { className: 'table-error' });
    const wrap = el(
      'div',
      { className: 'table-wrap', tabindex: '0', role: 'region', 'aria-labelledby': captionId },
      table,
    );
    // Long tables (an hourly series, an invoice line's records) are shown a page at a time;
    // the CSV always has every row.
    const previous = el('button', { type: 'button', className: 'secondary', 'data-testid': `${name}-previous` }, [
      'Previous rows',
    ]);
    const next = el('button', { type: 'button', className: 'secondary', 'data-testid': `${name}-next` }, ['Next rows']);
    const position = el('span', { className: 'pager-position', 'aria-live': 'polite', 'data-testid': `${name}-position` });
    const pager = el('div', { className: 'pager', role: 'group', 'aria-label': `Rows of ${caption}`, hidden: true }, [
      previous,
      position,
      next,
    ]);
    block.replaceChildren(el('div', { className: 'table-toolbar' }, button), problem, wrap, pager);
    let shown = { items: [], makeRow: null, start: 0 };
    const showPage = (start) => {
      const { items, makeRow } = shown;
      shown.start = start;
      const end = Math.min(items.length, start + PAGE_ROWS);
      tbody.replaceChildren(...items.slice(start, end).map(makeRow));
      pager.hidden = items.length <= PAGE_ROWS;
      previous.disabled = start === 0;
      next.disabled = end >= items.length;
      position.textContent = `Rows ${start + 1} to ${end} of ${items.length}`;
    };
    previous.addEventListener('click', () => showPage(Math.max(0, shown.start - PAGE_ROWS)));
    next.addEventListener('click', () => showPage(shown.start + PAGE_ROWS));
    const handle = {
      button,
      tbody,
      rows(items, makeRow, emptyText) {
        problem.textContent = '';
        shown = { items, makeRow, start: 0 };
        if (items.length) showPage(0);
        else handle.message(emptyText || 'Nothing to show.');
        button.disabled = false;
      },
      message(text) {
        pager.hidden = true;
        tbody.replaceChildren(
          el('tr', {}, el('td', { colspan: columns.length, className: 'empty', text })),
        );
      },
      problem(text) {
        problem.textContent = text;
      },
      caption(text) {
        captionNode.textContent = text;
        hidden.textContent = ` of ${text}`;
      },
      clear() {
        shown = { items: [], makeRow: null, start: 0 };
        tbody.replaceChildren();
        pager.hidden = true;
        problem.textContent = '';
        button.disabled = true;
      },
    };
    button.addEventListener('click', () => onCsv(handle));
    return handle;
  }

  /** A cell holding `text` in a span carrying `testid`; `money` prefixes "$". */
  function cell(text, testid, options) {
    const { money = false, numeric = false, unit = '', header = false } = options || {};
    const node = el(header ? 'th' : 'td', {
      scope: header ? 'row' : undefined,
      className: money || numeric ? 'num' : undefined,
    });
    if (money) node.append(el('span', { className: 'cur', text: '$' }));
    node.append(el('span', { 'data-testid': testid, text: plain(text) }));
    if (unit) node.append(' ', el('span', { className: 'unit', text: unit }));
    return node;
  }

  function buttonCell(text, testid, label, onClick) {
    const button = el('button', { type: 'button', className: 'link', 'data-testid': testid }, [
      text,
      label ? el('span', { className: 'sr-only', text: label }) : null,
    ]);
    button.addEventListener('click', onClick);
    return el('th', { scope: 'row' }, button);
  }

  let tables = {};

  function buildTables() {
    tables = {
      bySku: makeTable(
        'by-sku-block',
        'Spend by SKU',
        [{ label: 'SKU' }, { label: 'DBU', numeric: true }, { label: 'Amount', numeric: true }],
        () => {
          const rows = (state.summary ? state.summary.by_sku : []).map((r) => [r.sku_name, r.dbu, r.dollars]);
          saveCsv(`billing-spend-by-sku_${scopeSlug()}_${rangeSlug()}.csv`, ['sku_name', 'dbu', 'dollars'], rows);
        },
      ),
      byEndpoint: makeTable(
        'by-endpoint-block',
        'Spend by endpoint',
        [
          { label: 'Endpoint' },
          { label: 'Workspace' },
          { label: 'DBU', numeric: true },
          { label: 'Amount', numeric: true },
        ],
        () => {
          const rows = (state.summary ? state.summary.by_endpoint : []).map((r) => [
            r.endpoint_name,
            r.endpoint_id,
            plain(r.workspace_id),
            r.dbu,
            r.dollars,
          ]);
          saveCsv(
            `billing-spend-by-endpoint_${scopeSlug()}_${rangeSlug()}.csv`,
            ['endpoint_name', 'endpoint_id', 'workspace_id', 'dbu', 'dollars'],
            rows,
          );
        },
      ),
      series: makeTable(
        'series-block',
        'DBUs per bucket',
        [
          { label: 'Bucket start (UTC)' },
          { label: 'Endpoint' },
          { label: 'DBU', numeric: true },
          { label: 'Amount', numeric: true },
        ],
        () => {
          const summary = state.summary;
          if (!summary) return;
          const rows = summary.series.map((p) => [p.bucket_start, p.key, p.dbu, p.dollars]);
          const what = `${summary.group_by.toLowerCase()}-${summary.granularity.toLowerCase()}`;
          saveCsv(
            `billing-series-by-${what}_${scopeSlug()}_${rangeSlug()}.csv`,
            ['bucket_start', 'key', 'dbu', 'dollars'],
            rows,
          );
        },
      ),
      pricing: makeTable('pricing-block', 'Pricing modes by endpoint', pricingColumns(), () =>
        saveEstimatesCsv(
          `billing-pricing-modes_${scopeSlug()}_${rangeSlug()}.csv`,
          topChoices().map((choice) => [choice, state.pricing.get(choice.key)]),
        ),
      ),
      endpointSeries: makeTable(
        'endpoint-series-block',
        'Requests and tokens per bucket',
        [
          { label: 'Bucket start (UTC)' },
          { label: 'Requests', numeric: true },
          { label: 'Errors', numeric: true },
          { label: 'Tokens in', numeric: true },
          { label: 'Tokens out', numeric: true },
        ],
        () => {
          const stats = state.drillStats;
          if (!stats) return;
          saveCsv(
            `billing-endpoint-${fileSafe(stats.endpoint_name)}-stats_${drillSlug()}_${rangeSlug()}.csv`,
            ['endpoint_name', 'bucket_start', 'requests', 'errors', 'input_tokens', 'output_tokens'],
            stats.series.map((p) => [
              stats.endpoint_name,
              p.bucket_start,
              p.requests,
              p.errors,
              p.input_tokens,
              p.output_tokens,
            ]),
          );
        },
      ),
      endpointPricing: makeTable(
        'endpoint-pricing-block',
        'Pricing modes of this endpoint',
        pricingColumns(),
        () => {
          if (!state.drill) return;
          saveEstimatesCsv(
            `billing-endpoint-${fileSafe(state.drill.name)}-pricing_${drillSlug()}_${rangeSlug()}.csv`,
            [[state.drill, state.drillEstimate]],
          );
        },
      ),
      invoices: makeTable(
        'invoices-block',
        'Monthly invoices',
        [
          { label: 'Period' },
          { label: 'Workspace' },
          { label: 'Status' },
          { label: 'Total', numeric: true },
          { label: 'Currency' },
          { label: 'Stripe invoice' },
        ],
        (table) =>
          saveApiCsv(table, `${BILLING}/invoices`, scopeParams(filters.workspace), `billing-invoices_${scopeSlug()}.csv`),
      ),
      lines: makeTable(
        'lines-block',
        'Invoice lines',
        [
          { label: 'Line' },
          { label: 'SKU' },
          { label: 'Endpoint' },
          { label: 'Usage type' },
          { label: 'DBU', numeric: true },
          { label: '$/DBU', numeric: true },
          { label: 'Amount', numeric: true },
        ],
        (table) => {
          const invoice = state.invoice;
          if (!invoice) return;
          saveApiCsv(
            table,
            `${BILLING}/invoices/${encodeURIComponent(invoice.invoice_id)}`,
            {},
            `billing-invoice-${fileSafe(invoice.invoice_id)}-lines.csv`,
          );
        },
      ),
      records: makeTable(
        'records-block',
        'Usage records of the line',
        [
          { label: 'Record id' },
          { label: 'Hour start (UTC)' },
          { label: 'SKU' },
          { label: 'Quantity (DBU)', numeric: true },
          { label: 'Record type' },
          { label: 'Tokens in', numeric: true },
          { label: 'Tokens out', numeric: true },
        ],
        (table) => {
          const { invoice, line } = state;
          if (!invoice || !line) return;
          saveApiCsv(
            table,
            `${BILLING}/invoices/${encodeURIComponent(invoice.invoice_id)}/lines/${line.line_no}/records`,
            {},
            `billing-invoice-${fileSafe(invoice.invoice_id)}-line-${line.line_no}-records.csv`,
          );
        },
      ),
      budgets: makeTable(
        'budgets-block',
        'Budgets and their thresholds',
        [
          { label: 'Budget' },
          { label: 'Counts' },
          { label: 'Period' },
          { label: 'Threshold', numeric: true },
          { label: 'Spent', numeric: true },
          { label: 'Used', numeric: true },
          { label: 'Action' },
        ],
        () => saveBudgetsCsv(),
      ),
    };
  }

  // ---------------------------------------------------------------- charts

  let plotlyPromise = null;

  /** plotly.js (window.Plotly), loading it on first use with a plain script element: 4.6
   * MiB of script takes a second of main thread to run, which the overview need not wait
   * for. A failed load is tried again on the next call. */
  function plotly() {
    if (!plotlyPromise) {
      plotlyPromise = new Promise((resolve, reject) => {
        if (window.Plotly) {
          resolve(window.Plotly);
          return;
        }
        const script = el('script', { src: PLOTLY_SRC, id: 'plotly-script' });
        script.addEventListener('load', () =>
          window.Plotly ? resolve(window.Plotly) : reject(new Error('plotly.js did not load')),
        );
        script.addEventListener('error', () => {
          script.remove();
          reject(new Error('plotly.js could not be loaded'));
        });
        document.head.append(script);
      });
      plotlyPromise.catch(() => {
        plotlyPromise = null;
      });
    }
    return plotlyPromise;
  }

  const charts = {
    series: { id: 'series-chart', view: 'series', figure: null, dirty: false, drawn: false },
    pricing: { id: 'pricing-chart', view: 'pricing', figure: null, dirty: false, drawn: false },
    endpoint: { id: 'endpoint-chart', view: 'endpoint', figure: null, dirty: false, drawn: false },
    endpointPricing: {
      id: 'endpoint-pricing-chart',
      view: 'endpoint',
      figure: null,
      dirty: false,
      drawn: false,
    },
  };
  const NARROW_PX = 640; // a chart narrower than this: legend below, shorter labels

  const chartVisible = (chart) => session.viewer !== null && $(chart.id).offsetParent !== null;

  function baseLayout(narrow) {
    return {
      autosize: true,
      margin: { l: narrow ? 48 : 64, r: narrow ? 12 : 24, t: 24, b: 48 },
      font: {
        family: 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif',
        size: narrow ? 11 : 12,
        color: '#1f2933',
      },
      paper_bgcolor: '#ffffff',
      plot_bgcolor: '#ffffff',
      hoverlabel: { namelength: -1 },
      colorway: [
        '#2563eb', '#d97706', '#059669', '#dc2626', '#7c3aed', '#0891b2', '#db2777',
        '#65a30d', '#9333ea', '#ea580c', '#0d9488', '#4f46e5', '#b45309', '#be123c',
      ],
    };
  }

  /** Sets chart `name`'s figure, a function of the chart's width giving {data, layout,
   * label}; drawn now if visible, else when its view is shown. */
  function setChart(name, figure) {
    const chart = charts[name];
    chart.figure = figure;
    chart.dirty = true;
    drawChart(name);
  }

  async function drawChart(name) {
    const chart = charts[name];
    if (!chart.figure || !chart.dirty || !chartVisible(chart)) return;
    chart.dirty = false;
    const node = $(chart.id);
    const figure = chart.figure;
    let Plotly;
    try {
      Plotly = await plotly();
    } catch (err) {
      chartProblem(chart, err);
      return;
    }
    if (chart.figure !== figure) return; // replaced (or cleared) meanwhile
    if (!chartVisible(chart)) {
      chart.dirty = true; // its view was left meanwhile: drawn when shown again
      return;
    }
    const narrow = node.clientWidth < NARROW_PX;
    const { data, layout, label } = figure(narrow);
    node.setAttribute('aria-label', label);
    const base = baseLayout(narrow);
    const config = {
      ...PLOTLY_CONFIG,
      toImageButtonOptions: { format: IMAGE_FORMAT, filename: `${chart.id}_${scopeSlug()}_${rangeSlug()}` },
    };
    const margin = { ...base.margin, ...(layout.margin || {}) };
    if (!chart.drawn) node.replaceChildren(); // a previous failure's message
    try {
      await Plotly.react(node, data, { ...base, ...layout, margin }, config);
      chart.drawn = true;
      chart.narrow = narrow;
    } catch (err) {
      chartProblem(chart, err);
    }
  }

  function chartProblem(chart, err) {
    const node = $(chart.id);
    if (chart.drawn && window.Plotly) window.Plotly.purge(node);
    chart.drawn = false;
    node.replaceChildren(
      el('p', {
        className: 'chart-error',
        text: `The chart could not be drawn (${err.message}); the table has the same figures.`,
      }),
    );
  }

  function refreshCharts() {
    for (const [name, chart] of Object.entries(charts)) {
      if (!chartVisible(chart)) continue;
      if (chart.dirty) drawChart(name);
      else if (chart.drawn && window.Plotly) window.Plotly.Plots.resize($(chart.id));
    }
  }

  /** Across the narrow / wide boundary a chart is laid out anew (legend, labels). */
  function chartsFitWidth() {
    for (const [name, chart] of Object.entries(charts)) {
      if (!chart.drawn || !chartVisible(chart)) continue;
      if (($(chart.id).clientWidth < NARROW_PX) !== chart.narrow) {
        chart.dirty = true;
        drawChart(name);
      }
    }
  }

  function clearChart(name) {
    const chart = charts[name];
    const node = $(chart.id);
    chart.figure = null;
    chart.dirty = false;
    if (chart.drawn && window.Plotly) window.Plotly.purge(node);
    chart.drawn = false;
    node.replaceChildren();
    node.removeAttribute('aria-label');
  }

  function emptyLayout(text) {
    return {
      xaxis: { visible: false },
      yaxis: { visible: false },
      annotations: [
        { text: plotlyText(text), showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: { size: 14 } },
      ],
    };
  }

  // ---------------------------------------------------------------- views and navigation

  function currentView() {
    const name = window.location.hash.slice(1);
    return VIEWS.includes(name) ? name : 'overview';
  }

  function showView(name, focus) {
    state.view = name;
    for (const view of VIEWS) $(view).hidden = view !== name;
    for (const link of document.querySelectorAll('#views-nav a')) {
      if (link.dataset.view === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (focus) $(`${name}-title`).focus();
    ensureView(name);
    refreshCharts();
  }

  function ensureView(name) {
    if (!session.viewer) return;
    if (name === 'overview' || name === 'series') loadSummary();
    else if (name === 'pricing') loadPricing();
    else if (name === 'endpoint') loadDrill();
    else if (name === 'invoices') loadInvoices();
    else if (name === 'budgets') loadBudgets();
  }

  function goTo(name) {
    if (window.location.hash === `#${name}`) showView(name, true);
    else window.location.hash = name; // hashchange shows it
  }

  // ---------------------------------------------------------------- sign-in, sign-out

  function storedToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  function storeToken(token) {
    try {
      if (token === null) window.sessionStorage.removeItem(TOKEN_KEY);
      else window.sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {
      // storage disabled: the session lasts as long as the page
    }
  }

  function showSignIn() {
    $('sign-in').hidden = false;
    $('who').hidden = true;
    $('filters').hidden = true;
    $('views-nav').hidden = true;
    for (const view of VIEWS) $(view).hidden = true;
  }

  function showSignedIn() {
    $('sign-in').hidden = true;
    $('who').hidden = false;
    $('filters').hidden = false;
    $('views-nav').hidden = false;
  }

  async function signIn(token, restoring) {
    session.epoch += 1;
    resetLoads();
    clearAll();
    clearAlert();
    session.token = token;
    session.viewer = null;
    const epoch = session.epoch;
    setBodyState('loading');
    announce('Signing in…');
    $('sign-in-button').disabled = true;
    let viewer;
    try {
      viewer = await api(`${BILLING}/viewer`);
    } catch (err) {
      if (epoch !== session.epoch || isAbort(err)) return;
      session.token = null;
      storeToken(null);
      clearAll();
      showSignIn();
      setBodyState('signed-out');
      announce('');
      let text;
      if (err.status === 401) text = `Sign-in failed: the token was not accepted (${err.message}).`;
      else if (err.status === 403) text = `Sign-in failed: this token may not read billing (${err.message}).`;
      else text = `Sign-in failed: ${err.message}`;
      showAlert(restoring ? `Your saved session could not be resumed. ${text}` : text);
      $('token').focus();
      $('token').select();
      return;
    } finally {
      $('sign-in-button').disabled = false;
    }
    if (epoch !== session.epoch) return;
    session.viewer = viewer;
    storeToken(token);
    $('token').value = '';
    renderViewer(viewer);
    showSignedIn();
    const range = presetRange('mtd');
    setRange(range.from, range.to, 'mtd');
    loadSummary(); // whatever view is shown: the summary is the page's state (and endpoints)
    showView(currentView(), !restoring);
  }

  /** Signs out: the token leaves sessionStorage and every view is emptied. */
  function signOut(reason) {
    session.epoch += 1;
    session.token = null;
    session.viewer = null;
    storeToken(null);
    resetLoads();
    clearAll();
    showSignIn();
    setBodyState('signed-out');
    if (reason) showAlert(reason);
    else clearAlert();
    announce('Signed out.');
    $('token').focus();
  }

  function expire(error) {
    signOut(`Your session has ended (${error.message}). Sign in again with a valid token.`);
  }

  function clearAll() {
    clearTimeout(reloadTimer);
    state.summary = null;
    state.summaryRange = null;
    state.choices = [];
    state.drill = null;
    state.drillStats = null;
    state.drillEstimate = null;
    state.pricing = new Map();
    state.pricingSelected = '';
    state.invoices = null;
    state.invoice = null;
    state.line = null;
    state.records = null;
    state.budgets = null;
    estimates.clear();
    for (const id of [
      'viewer-name', 'workspace-name', 'month-label', 'range-label', 'currency',
      'mtd-dbu', 'mtd-dollars', 'forecast-dbu', 'forecast-dollars', 'range-dbu', 'range-dollars',
      'overview-status', 'series-status', 'pricing-status', 'endpoint-status',
      'endpoint-pricing-status', 'invoices-status', 'lines-status', 'records-status',
      'budgets-status', 'lines-title', 'records-title', 'range-error', 'granularity-hint',
    ]) {
      setText(id, '');
    }
    clearDrillTiles();
    for (const table of Object.values(tables)) table.clear();
    for (const name of Object.keys(charts)) clearChart(name);
    for (const id of ['workspace', 'pricing-endpoint', 'endpoint-select', 'pricing-facts', 'endpoint-pricing-facts']) {
      $(id).replaceChildren();
    }
    $('invoice-facts').replaceChildren();
    $('lines-panel').hidden = true;
    $('records-panel').hidden = true;
    $('endpoint-body').hidden = true;
    $('workspace-field').hidden = true;
    $('workspace-text-field').hidden = true;
    $('series-details').open = false;
    $('endpoint-details').open = false;
    for (const view of VIEWS) setViewState(view, 'idle');
    delete document.body.dataset.loadedAt;
  }

  // ---------------------------------------------------------------- header and filters

  function workspaceName(id) {
    if (id === null || id === undefined || id === '') return 'shared';
    const viewer = session.viewer;
    const found = viewer && viewer.workspaces.find((w) => w.workspace_id === id);
    return found ? found.name : id;
  }

  function renderViewer(viewer) {
    setText('viewer-name', viewer.user_name);
    filters.workspace = '';
    if (viewer.is_account_admin) {
      const select = $('workspace');
      select.replaceChildren(
        el('option', { value: '', text: 'All workspaces' }),
        ...viewer.workspaces.map((w) => el('option', { value: w.workspace_id, text: w.name })),
      );
      select.value = '';
      $('workspace-field').hidden = false;
    } else {
      setText('workspace-name', workspaceName(viewer.workspace_id));
      $('workspace-text-field').hidden = false;
    }
  }

  /** Sets the range (and the granularity it defaults to); `preset` names the button. */
  function setRange(from, to, preset) {
    filters.from = from;
    filters.to = to;
    $('range-from').value = from;
    $('range-to').value = to;
    for (const button of document.querySelectorAll('.preset')) {
      button.setAttribute('aria-pressed', String(button.dataset.preset === preset));
    }
    const problem = rangeProblem(from, to);
    setText('range-error', problem);
    for (const id of ['range-from', 'range-to']) {
      if (problem) $(id).setAttribute('aria-invalid', 'true');
      else $(id).removeAttribute('aria-invalid');
    }
    if (problem) return false;
    const days = daysIn(from, to);
    const hourly = $('granularity').querySelector('option[value="HOUR"]');
    hourly.disabled = days > MAX_HOURLY_DAYS;
    setText('granularity-hint', hourly.disabled ? `Hourly covers at most ${MAX_HOURLY_DAYS} days.` : '');
    filters.granularity = days > DEFAULT_DAILY_OVER_DAYS ? 'DAY' : 'HOUR';
    $('granularity').value = filters.granularity;
    return true;
  }

  function presetOf(from, to) {
    for (const preset of ['mtd', '7', '30', '90']) {
      const range = presetRange(preset);
      if (range.from === from && range.to === to) return preset;
    }
    return '';
  }

  let reloadTimer = 0;

  function filtersChanged(delay) {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => {
      if (!session.viewer || rangeProblem(filters.from, filters.to)) return;
      loadSummary();
      ensureView(state.view);
    }, delay);
  }

  function wireFilters() {
    $('filters').addEventListener('submit', (event) => event.preventDefault());
    $('workspace').addEventListener('change', () => {
      filters.workspace = $('workspace').value;
      state.drill = null;
      state.invoice = null;
      state.line = null;
      filtersChanged(0);
    });
    for (const id of ['range-from', 'range-to']) {
      $(id).addEventListener('change', () => {
        const from = $('range-from').value;
        const to = $('range-to').value;
        if (setRange(from, to, presetOf(from, to))) filtersChanged(300);
      });
    }
    for (const button of document.querySelectorAll('.preset')) {
      button.addEventListener('click', () => {
        const range = presetRange(button.dataset.preset);
        if (setRange(range.from, range.to, button.dataset.preset)) filtersChanged(0);
      });
    }
    $('granularity').addEventListener('change', () => {
      filters.granularity = $('granularity').value;
      filtersChanged(0);
    });
    $('group-by').addEventListener('change', () => {
      filters.groupBy = $('group-by').value;
      filtersChanged(0);
    });
  }

  // ---------------------------------------------------------------- overview and series

  async function loadSummary() {
    if (!session.viewer || rangeProblem(filters.from, filters.to)) return;
    const entry = startLoad('summary', summaryKey());
    if (!entry) return;
    const range = rangeKey();
    setBodyState('loading');
    setViewState('overview', 'loading');
    setViewState('series', 'loading');
    announce('Loading billing data…');
    setText('overview-status', 'Loading…');
    setText('series-status', 'Loading…');
    try {
      const summary = await api(`${BILLING}/summary`, {
        params: {
          ...rangeParams(),
          granularity: filters.granularity,
          group_by: filters.groupBy,
          ...scopeParams(filters.workspace),
        },
        signal: entry.controller.signal,
      });
      if (!isCurrent('summary', entry)) return;
      if (state.summaryRange !== range) {
        for (const key of [...estimates.keys()]) {
          if (!key.startsWith(`${range}|`)) estimates.delete(key); // other ranges' estimates
        }
        state.pricing = new Map();
        forgetLoad('pricing');
      }
      state.summary = summary;
      state.summaryRange = range;
      clearAlert();
      renderOverview(summary);
      updateChoices(summary);
      renderSeries(summary);
      setViewState('overview', 'ready');
      setViewState('series', 'ready');
      setBodyState('ready');
      document.body.dataset.loadedAt = String(performance.now());
      announce(`Billing data loaded for ${filters.from} to ${filters.to}.`);
      setTimeout(() => plotly().catch(() => {}), 0); // the charts' library, now the overview is up
      if (state.view === 'pricing' || state.view === 'endpoint') ensureView(state.view);
    } catch (err) {
      if (isAbort(err) || !isCurrent('summary', entry)) return;
      failed('summary', entry);
      clearSummaryViews();
      setViewState('overview', 'error');
      setViewState('series', 'error');
      setBodyState('error');
      const text = `Billing data could not be loaded: ${err.message}`;
      setText('overview-status', text);
      setText('series-status', text);
      showAlert(text);
      announce('');
    }
  }

  function clearSummaryViews() {
    state.summary = null;
    state.summaryRange = null;
    for (const id of ['mtd-dbu', 'mtd-dollars', 'forecast-dbu', 'forecast-dollars', 'range-dbu', 'range-dollars', 'month-label', 'range-label', 'currency']) {
      setText(id, '');
    }
    tables.bySku.clear();
    tables.byEndpoint.clear();
    tables.series.clear();
    clearChart('series');
  }

  function renderOverview(summary) {
    setText('overview-status', '');
    setText('month-label', summary.month.month);
    setText('range-label', `${filters.from} to ${filters.to}`);
    setText('currency', summary.currency.toUpperCase());
    setText('mtd-dbu', summary.month.month_to_date.dbu);
    setText('mtd-dollars', summary.month.month_to_date.dollars);
    setText('forecast-dbu', summary.month.forecast.dbu);
    setText('forecast-dollars', summary.month.forecast.dollars);
    setText('range-dbu', summary.total.dbu);
    setText('range-dollars', summary.total.dollars);
    tables.bySku.rows(
      summary.by_sku,
      (row) =>
        el('tr', { 'data-testid': 'by-sku-row', dataset: { key: row.sku_name } }, [
          cell(row.sku_name, 'by-sku-name', { header: true }),
          cell(row.dbu, 'by-sku-dbu', { numeric: true }),
          cell(row.dollars, 'by-sku-dollars', { money: true }),
        ]),
      'No usage in this range.',
    );
    tables.byEndpoint.rows(
      summary.by_endpoint,
      (row) =>
        el('tr', { 'data-testid': 'by-endpoint-row', dataset: { key: row.endpoint_name } }, [
          buttonCell(row.endpoint_name, 'by-endpoint-name', ' — open its drill-down', () =>
            openDrill(choiceFor(row)),
          ),
          cell(workspaceName(row.workspace_id), 'by-endpoint-workspace'),
          cell(row.dbu, 'by-endpoint-dbu', { numeric: true }),
          cell(row.dollars, 'by-endpoint-dollars', { money: true }),
        ]),
      'No usage in this range.',
    );
  }

  /** The series' keys, largest first (the order of by_endpoint / by_sku), then the rest. */
  function seriesKeys(summary) {
    const ordered =
      summary.group_by === 'SKU'
        ? summary.by_sku.map((r) => r.sku_name)
        : summary.by_endpoint.map((r) => r.endpoint_name);
    const keys = [];
    const seen = new Set();
    for (const key of ordered.concat(summary.series.map((p) => p.key))) {
      if (!seen.has(key)) {
        seen.add(key);
        keys.push(key);
      }
    }
    const present = new Set(summary.series.map((p) => p.key));
    return keys.filter((key) => present.has(key));
  }

  function renderSeries(summary) {
    setText('series-status', '');
    const byWhat = summary.group_by === 'SKU' ? 'SKU' : 'endpoint';
    const per = summary.granularity === 'HOUR' ? 'hour' : 'day';
    tables.series.caption(`DBUs per ${per} by ${byWhat}, ${filters.from} to ${filters.to}`);
    tables.series.tbody.closest('table').querySelectorAll('th')[1].textContent =
      summary.group_by === 'SKU' ? 'SKU' : 'Endpoint';
    renderSeriesTable();
    setChart('series', (narrow) => seriesFigure(summary, narrow));
  }

  function renderSeriesTable() {
    const summary = state.summary;
    if (!summary) return;
    if (!$('series-details').open) {
      // Drawn when opened (a 31-day hourly range of 50 endpoints is 37,000 points).
      tables.series.clear();
      tables.series.button.disabled = false;
      return;
    }
    tables.series.rows(
      summary.series,
      (point) =>
        el('tr', { 'data-testid': 'series-row' }, [
          cell(point.bucket_start, 'series-bucket', { header: true }),
          cell(point.key, 'series-key'),
          cell(point.dbu, 'series-dbu', { numeric: true }),
          cell(point.dollars, 'series-dollars', { money: true }),
        ]),
      'No usage in this range.',
    );
  }

  function seriesFigure(summary, narrow) {
    const keys = seriesKeys(summary);
    const traces = new Map(keys.map((key) => [key, { x: [], y: [], customdata: [] }]));
    for (const point of summary.series) {
      const trace = traces.get(point.key);
      trace.x.push(plotlyDate(point.bucket_start));
      trace.y.push(height(point.dbu));
      trace.customdata.push([plotlyText(point.dbu), plotlyText(point.dollars)]);
    }
    const area = summary.series.length > AREA_OVER_POINTS;
    const per = summary.granularity === 'HOUR' ? 'hour' : 'day';
    const byWhat = summary.group_by === 'SKU' ? 'SKU' : 'endpoint';
    const label =
      `Stacked ${area ? 'area' : 'bar'} chart of DBUs per ${per} by ${byWhat}, ` +
      `${filters.from} to ${filters.to}: ${keys.length} series. The data table below lists every figure.`;
    if (!keys.length) return { data: [], layout: emptyLayout('No usage in this range'), label };
    const data = keys.map((key) => {
      const trace = traces.get(key);
      const shared = {
        name: plotlyText(key),
        x: trace.x,
        y: trace.y,
        customdata: trace.customdata,
        hovertemplate: '%{x}<br>%{customdata[0]} DBU · $%{customdata[1]}<extra>%{fullData.name}</extra>',
      };
      if (area) return { ...shared, type: 'scatter', mode: 'lines', stackgroup: 'dbu', line: { width: 0.5 } };
      return { ...shared, type: 'bar' };
    });
    const legendRows = Math.ceil(keys.length / 2);
    return {
      data,
      layout: {
        barmode: 'stack',
        bargap: 0.15,
        height: narrow ? 320 + Math.min(legendRows, 12) * 20 : 460,
        hovermode: 'closest',
        showlegend: true,
        legend: narrow ? { orientation: 'h', x: 0, y: -0.18, yanchor: 'top' } : { x: 1.02, y: 1 },
        xaxis: { type: 'date', automargin: true, title: { text: narrow ? '' : `${per === 'hour' ? 'Hour' : 'Day'} (UTC)` } },
        yaxis: { title: { text: 'DBU' }, rangemode: 'tozero' },
      },
      label,
    };
  }

  // ---------------------------------------------------------------- endpoint choices

  function choiceFor(row) {
    // Under "All workspaces", a workspace's endpoint is looked at in its workspace.
    const workspace = filters.workspace || (session.viewer.is_account_admin ? plain(row.workspace_id) : '');
    const showWorkspace = session.viewer.is_account_admin && !filters.workspace;
    return {
      key: `${row.endpoint_name}\u0000${workspace}`,
      name: row.endpoint_name,
      workspace,
      label: showWorkspace ? `${row.endpoint_name} (${workspaceName(row.workspace_id)})` : row.endpoint_name,
    };
  }

  function updateChoices(summary) {
    const seen = new Set();
    state.choices = [];
    for (const row of summary.by_endpoint) {
      const choice = choiceFor(row);
      if (!seen.has(choice.key)) {
        seen.add(choice.key);
        state.choices.push(choice);
      }
    }
    renderDrillSelect();
  }

  const topChoices = () => state.choices.slice(0, PRICING_TOP);

  function estimateFor(choice) {
    const key = `${rangeKey()}|${choice.key}`;
    let pending = estimates.get(key);
    if (!pending) {
      pending = api(`${BILLING}/estimate`, {
        params: { endpoint_name: choice.name, ...rangeParams(), ...scopeParams(choice.workspace) },
      }).then(
        (data) => ({ kind: 'ok', data }),
        (err) => {
          if (isAbort(err)) throw err;
          if (err.status === 404) return { kind: 'missing', message: err.message };
          estimates.delete(key); // asked again next time
          return { kind: 'error', message: err.message };
        },
      );
      estimates.set(key, pending);
    }
    return pending;
  }

  // ---------------------------------------------------------------- pricing modes

  function pricingColumns() {
    return [
      { label: 'Endpoint' },
      { label: 'Current mode' },
      { label: 'Actual', numeric: true },
      { label: 'Other mode' },
      { label: 'Other mode would cost', numeric: true },
      { label: 'Break-even tokens/s', numeric: true },
      { label: 'Peak tokens/s', numeric: true },
      { label: 'Verdict' },
    ];
  }

  function verdict(estimate) {
    const order = compareDecimals(estimate.alternative.dollars, estimate.actual.dollars);
    if (order === 0) return 'same cost in either mode';
    const cheaper = order < 0 ? estimate.alternative.mode : estimate.actual.mode;
    return `cheaper as ${modeLabel(cheaper)}`;
  }

  function pricingRow(choice, outcome, onPick) {
    const first =
      onPick && outcome && outcome.kind === 'ok'
        ? buttonCell(choice.label, 'pricing-endpoint', ' — chart it', onPick)
        : cell(choice.label, 'pricing-endpoint', { header: true });
    const row = el('tr', { 'data-testid': 'pricing-row', dataset: { key: choice.name } }, first);
    if (!outcome) {
      row.append(el('td', { colspan: 7, className: 'empty', text: 'Loading…' }));
    } else if (outcome.kind !== 'ok') {
      const text = outcome.kind === 'missing' ? `not available: ${outcome.message}` : `could not be estimated: ${outcome.message}`;
      row.append(el('td', { colspan: 7, className: 'empty' }, el('span', { 'data-testid': 'pricing-unavailable', text })));
    } else {
      const e = outcome.data;
      row.append(
        cell(modeLabel(e.actual.mode), 'pricing-mode'),
        cell(e.actual.dollars, 'pricing-actual-dollars', { money: true }),
        cell(modeLabel(e.alternative.mode), 'pricing-other-mode'),
        cell(e.alternative.dollars, 'pricing-other-dollars', { money: true }),
        cell(e.break_even_tokens_per_s, 'pricing-break-even', { numeric: true }),
        cell(e.traffic.peak_tokens_per_s, 'pricing-peak', { numeric: true }),
        cell(verdict(e), 'pricing-verdict'),
      );
    }
    return row;
  }

  function saveEstimatesCsv(filename, pairs) {
    const header = [
      'endpoint_name', 'workspace_id', 'status', 'actual_mode', 'actual_dbu', 'actual_dollars',
      'alternative_mode', 'alternative_dbu', 'alternative_dollars', 'provisioned_chunks',
      'break_even_tokens_per_s', 'peak_tokens_per_s', 'input_tokens', 'output_tokens',
      'dollars_per_dbu', 'verdict', 'message',
    ];
    const rows = pairs.map(([choice, outcome]) => {
      if (!outcome || outcome.kind !== 'ok') {
        const status = outcome ? (outcome.kind === 'missing' ? 'not available' : 'error') : 'loading';
        return [choice.name, choice.workspace, status, '', '', '', '', '', '', '', '', '', '', '', '', '', outcome ? outcome.message : ''];
      }
      const e = outcome.data;
      return [
        e.endpoint_name, choice.workspace, 'ok', e.actual.mode, e.actual.dbu, e.actual.dollars,
        e.alternative.mode, e.alternative.dbu, e.alternative.dollars, e.alternative.provisioned_chunks,
        e.break_even_tokens_per_s, e.traffic.peak_tokens_per_s, e.traffic.input_tokens,
        e.traffic.output_tokens, e.dollars_per_dbu, verdict(e), '',
      ];
    });
    saveCsv(filename, header, rows);
  }

  async function loadPricing() {
    if (!session.viewer || !state.summary || state.summaryRange !== rangeKey()) return;
    const entry = startLoad('pricing', rangeKey());
    if (!entry) return;
    const choices = topChoices();
    state.pricing = new Map();
    setViewState('pricing', 'loading');
    setText('pricing-status', choices.length ? `Estimating ${choices.length} endpoints…` : '');
    renderPricingTable();
    renderPricingSelect();
    await eachLimited(
      choices,
      CONCURRENCY,
      async (choice) => {
        let outcome;
        try {
          outcome = await estimateFor(choice);
        } catch (err) {
          return; // superseded
        }
        if (!isCurrent('pricing', entry)) return;
        state.pricing.set(choice.key, outcome);
        renderPricingTable();
        renderPricingSelect();
      },
      entry.controller.signal,
    );
    if (!isCurrent('pricing', entry)) return;
    const problems = [...state.pricing.values()].filter((o) => o.kind === 'error').length;
    if (problems) failed('pricing', entry); // asked again when the view is shown again
    setText('pricing-status', choices.length ? '' : 'No endpoint has usage in this range.');
    setViewState('pricing', 'ready');
    if (state.view === 'pricing') announce('Pricing-mode estimates loaded.');
  }

  function renderPricingTable() {
    tables.pricing.rows(
      topChoices(),
      (choice) =>
        pricingRow(choice, state.pricing.get(choice.key), () => {
          const outcome = state.pricing.get(choice.key);
          if (outcome && outcome.kind === 'ok') {
            $('pricing-endpoint').value = choice.key;
            selectPricing(choice.key);
            $('pricing-chart').scrollIntoView({ block: 'nearest' });
          }
        }),
      'No endpoint has usage in this range.',
    );
  }

  function renderPricingSelect() {
    const select = $('pricing-endpoint');
    const ready = topChoices().filter((c) => {
      const outcome = state.pricing.get(c.key);
      return outcome && outcome.kind === 'ok';
    });
    select.replaceChildren(...ready.map((c) => el('option', { value: c.key, text: c.label })));
    select.disabled = !ready.length;
    const keep = ready.some((c) => c.key === state.pricingSelected);
    const chosen = keep ? state.pricingSelected : ready.length ? ready[0].key : '';
    select.value = chosen;
    if (chosen !== state.pricingSelected || (chosen && !charts.pricing.figure)) selectPricing(chosen);
    if (!chosen) clearChart('pricing');
  }

  function selectPricing(key) {
    state.pricingSelected = key;
    const choice = state.choices.find((c) => c.key === key);
    const outcome = choice && state.pricing.get(key);
    if (!outcome || outcome.kind !== 'ok') {
      clearChart('pricing');
      $('pricing-facts').replaceChildren();
      return;
    }
    setChart('pricing', (narrow) => pricingFigure(choice, outcome.data, narrow));
    renderRates('pricing-facts', outcome.data);
  }

  /** The chart's two rates as text (they are long decimals: text wraps, chart labels not). */
  function renderRates(id, estimate) {
    $(id).replaceChildren(
      'Peak sustained: ',
      el('strong', { 'data-testid': `${id}-peak`, text: estimate.traffic.peak_tokens_per_s }),
      ' tokens/s. Break-even (the dashed line): ',
      el('strong', { 'data-testid': `${id}-break-even`, text: estimate.break_even_tokens_per_s }),
      ' tokens/s: sustained above it, provisioned throughput costs less than pay-per-token.',
    );
  }

  function pricingFigure(choice, estimate, narrow) {
    const actualMode = modeLabel(estimate.actual.mode);
    const otherMode = modeLabel(estimate.alternative.mode);
    const peak = height(estimate.traffic.peak_tokens_per_s);
    const breakEven = height(estimate.break_even_tokens_per_s);
    const top = Math.max(peak, breakEven) * 1.15 || 1;
    const label =
      `Pricing modes of ${choice.label}: actual $${estimate.actual.dollars} as ${actualMode} ` +
      `against $${estimate.alternative.dollars} as ${otherMode}; peak sustained ` +
      `${estimate.traffic.peak_tokens_per_s} tokens/s against a break-even of ` +
      `${estimate.break_even_tokens_per_s} tokens/s (the dashed line). The table lists the same figures.`;
    return {
      label,
      data: [
        {
          type: 'bar',
          orientation: 'h',
          name: 'Cost',
          x: [height(estimate.actual.dollars), height(estimate.alternative.dollars)],
          y: narrow ? ['Actual', 'Other mode'] : [`Actual (${actualMode})`, `As ${otherMode}`],
          customdata: [actualMode, otherMode],
          text: [`$${plotlyText(estimate.actual.dollars)}`, `$${plotlyText(estimate.alternative.dollars)}`],
          textposition: 'auto',
          hovertemplate: '%{customdata}: %{text}<extra></extra>',
          marker: { color: ['#2563eb', '#94a3b8'] },
          xaxis: 'x',
          yaxis: 'y',
        },
        {
          type: 'bar',
          orientation: 'h',
          name: 'Peak sustained tokens/s',
          x: [peak],
          y: [narrow ? 'Peak' : 'Peak tokens/s'],
          text: [`${plotlyText(estimate.traffic.peak_tokens_per_s)} tokens/s`],
          textposition: 'none',
          hovertemplate: 'Peak sustained: %{text}<extra></extra>',
          marker: { color: '#059669' },
          xaxis: 'x2',
          yaxis: 'y2',
        },
      ],
      layout: {
        height: 400,
        showlegend: false,
        margin: { l: 16, t: 24, b: 40 },
        xaxis: { anchor: 'y', domain: [0, 1], tickprefix: '$', rangemode: 'tozero', automargin: true },
        yaxis: { anchor: 'x', domain: [0.58, 1], automargin: true },
        xaxis2: { anchor: 'y2', domain: [0, 1], title: { text: 'tokens per second' }, range: [0, top] },
        yaxis2: { anchor: 'x2', domain: [0, 0.18], automargin: true },
        shapes: [
          {
            type: 'line',
            xref: 'x2',
            yref: 'y2 domain',
            x0: breakEven,
            x1: breakEven,
            y0: -0.1,
            y1: 1.1,
            line: { color: '#b91c1c', width: 2, dash: 'dash' },
          },
        ],
        annotations: [
          {
            xref: 'x2',
            yref: 'y2 domain',
            x: breakEven,
            y: 1.1,
            xanchor: breakEven > top * 0.5 ? 'right' : 'left',
            yanchor: 'bottom',
            showarrow: false,
            text: 'break-even',
            font: { color: '#b91c1c' },
          },
        ],
      },
    };
  }

  // ---------------------------------------------------------------- endpoint drill-down

  const drillSlug = () => (state.drill && state.drill.workspace ? `workspace-${fileSafe(state.drill.workspace)}` : scopeSlug());

  function renderDrillSelect() {
    const select = $('endpoint-select');
    const options = state.choices.slice();
    if (state.drill && !options.some((c) => c.key === state.drill.key)) options.push(state.drill);
    select.replaceChildren(
      el('option', { value: '', text: 'Choose an endpoint' }),
      ...options.map((c) => el('option', { value: c.key, text: c.label })),
    );
    select.value = state.drill ? state.drill.key : '';
  }

  function openDrill(choice) {
    state.drill = choice;
    renderDrillSelect();
    goTo('endpoint');
    loadDrill();
  }

  function clearDrillTiles() {
    for (const id of ['stats-requests', 'stats-errors', 'stats-error-rate', 'stats-input-tokens', 'stats-output-tokens', 'stats-p50-ms', 'stats-p99-ms']) {
      setText(id, '');
    }
  }

  function clearDrill() {
    state.drillStats = null;
    state.drillEstimate = null;
    clearDrillTiles();
    tables.endpointSeries.clear();
    tables.endpointPricing.clear();
    clearChart('endpoint');
    clearChart('endpointPricing');
    $('endpoint-pricing-facts').replaceChildren();
    setText('endpoint-pricing-status', '');
    $('endpoint-body').hidden = true;
  }

  async function loadDrill() {
    if (!session.viewer || rangeProblem(filters.from, filters.to)) return;
    const choice = state.drill;
    if (!choice) {
      forgetLoad('drill');
      clearDrill();
      setText('endpoint-status', 'Choose an endpoint, here or in the Overview’s “Spend by endpoint” table.');
      setViewState('endpoint', 'idle');
      return;
    }
    const entry = startLoad('drill', JSON.stringify([rangeKey(), filters.granularity, choice.key]));
    if (!entry) return;
    clearDrill();
    setViewState('endpoint', 'loading');
    setText('endpoint-status', `Loading ${choice.label}…`);
    const estimate = estimateFor(choice).catch(() => null);
    try {
      const stats = await api(`${BILLING}/endpoint-stats`, {
        params: {
          endpoint_name: choice.name,
          ...rangeParams(),
          granularity: filters.granularity,
          ...scopeParams(choice.workspace),
        },
        signal: entry.controller.signal,
      });
      if (!isCurrent('drill', entry)) return;
      state.drillStats = stats;
      setText('endpoint-status', '');
      $('endpoint-body').hidden = false;
      renderDrillStats(stats);
    } catch (err) {
      if (isAbort(err) || !isCurrent('drill', entry)) return;
      failed('drill', entry);
      setViewState('endpoint', 'error');
      setText('endpoint-status', `The endpoint’s traffic could not be loaded: ${err.message}`);
      return;
    }
    setText('endpoint-pricing-status', 'Estimating…');
    const outcome = await estimate;
    if (!isCurrent('drill', entry)) return;
    state.drillEstimate = outcome;
    renderDrillPricing(choice, outcome);
    setViewState('endpoint', 'ready');
    announce(`Drill-down loaded for ${choice.label}.`);
  }

  function renderDrillStats(stats) {
    setText('stats-requests', stats.requests);
    setText('stats-errors', stats.errors);
    setText('stats-error-rate', stats.error_rate);
    setText('stats-input-tokens', stats.input_tokens);
    setText('stats-output-tokens', stats.output_tokens);
    setText('stats-p50-ms', stats.p50_latency_ms === null ? 'no data' : stats.p50_latency_ms);
    setText('stats-p99-ms', stats.p99_latency_ms === null ? 'no data' : stats.p99_latency_ms);
    $('stats-p50-unit').hidden = stats.p50_latency_ms === null;
    $('stats-p99-unit').hidden = stats.p99_latency_ms === null;
    renderDrillSeriesTable();
    setChart('endpoint', (narrow) => statsFigure(stats, narrow));
  }

  function renderDrillSeriesTable() {
    const stats = state.drillStats;
    if (!stats) return;
    tables.endpointSeries.rows(
      stats.series,
      (p) =>
        el('tr', { 'data-testid': 'endpoint-series-row' }, [
          cell(p.bucket_start, 'endpoint-series-bucket', { header: true }),
          cell(p.requests, 'endpoint-series-requests', { numeric: true }),
          cell(p.errors, 'endpoint-series-errors', { numeric: true }),
          cell(p.input_tokens, 'endpoint-series-input-tokens', { numeric: true }),
          cell(p.output_tokens, 'endpoint-series-output-tokens', { numeric: true }),
        ]),
      'No requests in this range.',
    );
  }

  function statsFigure(stats, narrow) {
    const x = stats.series.map((p) => plotlyDate(p.bucket_start));
    const per = stats.granularity === 'HOUR' ? 'hour' : 'day';
    const label =
      `Requests, errors and tokens per ${per} of ${stats.endpoint_name}, ${filters.from} to ` +
      `${filters.to}: ${stats.requests} requests, ${stats.errors} errors, ${stats.input_tokens} ` +
      `tokens in, ${stats.output_tokens} tokens out. The data table below lists every figure.`;
    if (!x.length) return { data: [], layout: emptyLayout('No requests in this range'), label };
    const bars = (name, values, axis, color) => ({
      type: 'bar',
      name,
      x,
      y: values,
      xaxis: axis === 2 ? 'x2' : 'x',
      yaxis: axis === 2 ? 'y2' : 'y',
      marker: { color },
      hovertemplate: `%{x}<br>%{y} ${name.toLowerCase()}<extra></extra>`,
    });
    return {
      label,
      data: [
        bars('Requests', stats.series.map((p) => p.requests), 1, '#2563eb'),
        bars('Errors', stats.series.map((p) => p.errors), 1, '#dc2626'),
        bars('Tokens in', stats.series.map((p) => p.input_tokens), 2, '#059669'),
        bars('Tokens out', stats.series.map((p) => p.output_tokens), 2, '#d97706'),
      ],
      layout: {
        height: narrow ? 480 : 520,
        barmode: 'group',
        hovermode: 'closest',
        legend: { orientation: 'h', x: 0, y: 1.08, yanchor: 'bottom' },
        margin: { t: 48 },
        xaxis: { type: 'date', anchor: 'y', matches: 'x2', showticklabels: false },
        yaxis: { domain: [0.56, 1], title: { text: 'Requests' }, rangemode: 'tozero' },
        xaxis2: { type: 'date', anchor: 'y2', automargin: true, title: { text: `${per === 'hour' ? 'Hour' : 'Day'} (UTC)` } },
        yaxis2: { domain: [0, 0.44], title: { text: 'Tokens' }, rangemode: 'tozero' },
      },
    };
  }

  function renderDrillPricing(choice, outcome) {
    if (!outcome) {
      setText('endpoint-pricing-status', '');
      return;
    }
    setText('endpoint-pricing-status', '');
    tables.endpointPricing.rows([choice], (c) => pricingRow(c, outcome, null));
    if (outcome.kind === 'ok') {
      setChart('endpointPricing', (narrow) => pricingFigure(choice, outcome.data, narrow));
      renderRates('endpoint-pricing-facts', outcome.data);
    } else {
      clearChart('endpointPricing');
      $('endpoint-pricing-facts').replaceChildren();
    }
  }

  // ---------------------------------------------------------------- invoices

  async function loadInvoices() {
    if (!session.viewer) return;
    const entry = startLoad('invoices', JSON.stringify([filters.workspace]));
    if (!entry) return;
    state.invoices = null;
    closeInvoice();
    tables.invoices.clear();
    setViewState('invoices', 'loading');
    setText('invoices-status', 'Loading invoices…');
    try {
      const answer = await api(`${BILLING}/invoices`, {
        params: scopeParams(filters.workspace),
        signal: entry.controller.signal,
      });
      if (!isCurrent('invoices', entry)) return;
      state.invoices = answer.invoices;
      setText('invoices-status', '');
      tables.invoices.rows(
        answer.invoices,
        (invoice) =>
          el('tr', { 'data-testid': 'invoice-row', dataset: { invoiceId: invoice.invoice_id } }, [
            buttonCell(invoice.period, 'invoice-period', ` — show the lines of invoice ${invoice.invoice_id}`, () =>
              openInvoice(invoice),
            ),
            cell(workspaceName(invoice.workspace_id), 'invoice-workspace'),
            cell(invoice.status, 'invoice-status'),
            cell(invoice.total, 'invoice-total', { money: true }),
            cell(invoice.currency.toUpperCase(), 'invoice-currency'),
            cell(invoice.stripe_invoice_id || 'not sent', 'invoice-stripe'),
          ]),
        'No invoices yet: a month is invoiced once it has closed.',
      );
      setViewState('invoices', 'ready');
      if (state.view === 'invoices') announce(`${count(answer.invoices.length, 'invoice')} loaded.`);
    } catch (err) {
      if (isAbort(err) || !isCurrent('invoices', entry)) return;
      failed('invoices', entry);
      setViewState('invoices', 'error');
      setText('invoices-status', `Invoices could not be loaded: ${err.message}`);
    }
  }

  function closeInvoice() {
    forgetLoad('invoice');
    forgetLoad('records');
    state.invoice = null;
    state.line = null;
    $('lines-panel').hidden = true;
    $('records-panel').hidden = true;
    tables.lines.clear();
    tables.records.clear();
    $('invoice-facts').replaceChildren();
  }

  async function openInvoice(invoice) {
    closeInvoice();
    const entry = startLoad('invoice', invoice.invoice_id);
    $('lines-panel').hidden = false;
    setText('lines-title', `Invoice ${invoice.period}, ${workspaceName(invoice.workspace_id)}`);
    setText('lines-status', 'Loading the invoice’s lines…');
    $('lines-panel').dataset.state = 'loading';
    $('lines-title').focus();
    try {
      const detail = await api(`${BILLING}/invoices/${encodeURIComponent(invoice.invoice_id)}`, {
        signal: entry.controller.signal,
      });
      if (!isCurrent('invoice', entry)) return;
      state.invoice = detail;
      setText('lines-status', '');
      renderInvoiceFacts(detail);
      tables.lines.rows(
        detail.lines,
        (line) =>
          el('tr', { 'data-testid': 'line-row', dataset: { lineNo: String(line.line_no) } }, [
            buttonCell(`Line ${line.line_no}`, 'line-no', ' — show its usage records', () => openLine(detail, line)),
            cell(line.sku_name, 'line-sku'),
            cell(line.endpoint_name, 'line-endpoint'),
            cell(line.usage_type, 'line-usage-type'),
            cell(line.dbu, 'line-dbu', { numeric: true }),
            cell(line.dollars_per_dbu, 'line-dollars-per-dbu', { money: true }),
            cell(line.amount, 'line-amount', { money: true }),
          ]),
        'This invoice has no lines.',
      );
      $('lines-panel').dataset.state = 'ready';
      announce(`Invoice ${detail.period}: ${count(detail.lines.length, 'line')}.`);
    } catch (err) {
      if (isAbort(err) || !isCurrent('invoice', entry)) return;
      failed('invoice', entry);
      $('lines-panel').dataset.state = 'error';
      setText('lines-status', `The invoice could not be loaded: ${err.message}`);
    }
  }

  function renderInvoiceFacts(detail) {
    const facts = [
      ['Invoice id', detail.invoice_id, 'invoice-detail-id'],
      ['Period', detail.period, 'invoice-detail-period'],
      ['Workspace', workspaceName(detail.workspace_id), 'invoice-detail-workspace'],
      ['Status', detail.status, 'invoice-detail-status'],
      ['Subtotal', `$${detail.subtotal}`, 'invoice-detail-subtotal'],
      ['Total', `$${detail.total}`, 'invoice-detail-total'],
      ['Currency', detail.currency.toUpperCase(), 'invoice-detail-currency'],
      ['Rate card', detail.rate_card_version || 'none', 'invoice-detail-rate-card'],
      ['Created', detail.created_at, 'invoice-detail-created'],
      ['Stripe invoice', detail.stripe_invoice_id || 'not sent', 'invoice-detail-stripe'],
    ];
    $('invoice-facts').replaceChildren(
      ...facts.map(([term, value, testid]) =>
        el('div', { className: 'fact' }, [el('dt', { text: term }), el('dd', { 'data-testid': testid, text: value })]),
      ),
    );
  }

  async function openLine(invoice, line) {
    const entry = startLoad('records', `${invoice.invoice_id}|${line.line_no}`);
    if (!entry) {
      $('records-title').focus();
      return;
    }
    state.line = line;
    state.records = null;
    tables.records.clear();
    $('records-panel').hidden = false;
    $('records-panel').dataset.state = 'loading';
    setText('records-title', `Usage records of line ${line.line_no}: ${line.sku_name}, ${line.endpoint_name}`);
    setText('records-status', 'Loading the usage records…');
    $('records-title').focus();
    const path = `${BILLING}/invoices/${encodeURIComponent(invoice.invoice_id)}/lines/${line.line_no}/records`;
    try {
      const answer = await api(path, { signal: entry.controller.signal });
      if (!isCurrent('records', entry)) return;
      state.records = answer.records;
      setText('records-status', '');
      tables.records.rows(
        answer.records,
        (record) => {
          const tokens = tokensOf(record);
          return el('tr', { 'data-testid': 'record-row' }, [
            cell(record.record_id, 'record-id', { header: true }),
            cell(record.usage_start_time, 'record-hour'),
            cell(record.sku_name, 'record-sku'),
            cell(record.usage_quantity, 'record-quantity', { numeric: true }),
            cell(record.record_type, 'record-type'),
            cell(tokens.input, 'record-input-tokens', { numeric: true }),
            cell(tokens.output, 'record-output-tokens', { numeric: true }),
          ]);
        },
        'No usage records behind this line.',
      );
      $('records-panel').dataset.state = 'ready';
      announce(`${count(answer.records.length, 'usage record')} behind line ${line.line_no}.`);
    } catch (err) {
      if (isAbort(err) || !isCurrent('records', entry)) return;
      failed('records', entry);
      $('records-panel').dataset.state = 'error';
      setText('records-status', `The usage records could not be loaded: ${err.message}`);
    }
  }

  /** A record's token counts, where the API gives them (else "—"). */
  function tokensOf(record) {
    const places = [record, record.usage_metadata || {}, record.product_features || {}];
    const find = (name) => {
      for (const place of places) {
        const value = place[name];
        if (value !== undefined && value !== null && typeof value !== 'object') return String(value);
      }
      return '—';
    };
    return { input: find('input_tokens'), output: find('output_tokens') };
  }

  // ---------------------------------------------------------------- budgets

  async function loadBudgets() {
    const viewer = session.viewer;
    if (!viewer) return;
    if (!viewer.is_account_admin) {
      forgetLoad('budgets');
      budgetsDenied();
      return;
    }
    const entry = startLoad('budgets', viewer.account_id);
    if (!entry) return;
    state.budgets = null;
    tables.budgets.clear();
    setViewState('budgets', 'loading');
    setText('budgets-status', 'Loading budgets…');
    const base = `/api/2.1/accounts/${encodeURIComponent(viewer.account_id)}`;
    try {
      const answer = await api(`${base}/budgets`, { signal: entry.controller.signal });
      if (!isCurrent('budgets', entry)) return;
      const items = answer.budgets.map((budget) => ({ budget, status: null, problem: '' }));
      await eachLimited(
        items,
        CONCURRENCY,
        async (item) => {
          try {
            item.status = await api(
              `${base}/budget-spend-statuses/${encodeURIComponent(item.budget.budget_configuration_id)}`,
              { signal: entry.controller.signal },
            );
          } catch (err) {
            if (isAbort(err)) return;
            item.problem = err.message;
          }
        },
        entry.controller.signal,
      );
      if (!isCurrent('budgets', entry)) return;
      state.budgets = items;
      setText('budgets-status', 'Budgets belong to the account: this list is the same whatever workspace is chosen above.');
      renderBudgets(items);
      if (items.some((item) => item.problem)) failed('budgets', entry);
      setViewState('budgets', 'ready');
      if (state.view === 'budgets') announce(`${count(items.length, 'budget')} loaded.`);
    } catch (err) {
      if (isAbort(err) || !isCurrent('budgets', entry)) return;
      failed('budgets', entry);
      if (err.status === 403) {
        budgetsDenied();
        return;
      }
      setViewState('budgets', 'error');
      setText('budgets-status', `Budgets could not be loaded: ${err.message}`);
    }
  }

  function budgetsDenied() {
    tables.budgets.clear();
    $('budgets-block').hidden = true;
    const status = $('budgets-status');
    status.replaceChildren(el('span', { 'data-testid': 'budgets-denied', text: 'Budgets are managed by account admins.' }));
    setViewState('budgets', 'ready');
  }

  function filterSummary(filter) {
    const parts = [];
    const values = (clause) => (clause && Array.isArray(clause.values) ? clause.values : []);
    const workspaces = values(filter && filter.workspace_id);
    if (workspaces.length) parts.push(`workspaces ${workspaces.map(workspaceName).join(', ')}`);
    for (const tag of (filter && filter.tags) || []) {
      parts.push(`tag ${tag.key} in ${values(tag.value).join(', ')}`);
    }
    const endpoints = values(filter && filter.endpoint_name);
    if (endpoints.length) parts.push(`endpoints ${endpoints.join(', ')}`);
    return parts.length ? parts.join('; ') : 'all of the account’s usage';
  }

  const isDollars = (quantityType) => quantityType !== 'DBU';

  function amountCell(value, quantityType, testid) {
    if (value === null || value === undefined || value === '') return cell('unavailable', testid);
    return isDollars(quantityType)
      ? cell(value, testid, { money: true })
      : cell(value, testid, { numeric: true, unit: 'DBU' });
  }

  function actionsOf(alert) {
    const names = (alert.action_configurations || []).map((a) =>
      a.action_type === 'BLOCK_USAGE' ? 'blocks usage' : a.action_type === 'WEBHOOK_NOTIFICATION' ? 'webhook' : a.action_type,
    );
    return names.join(', ') || 'none';
  }

  function budgetRows(items) {
    const rows = [];
    for (const item of items) {
      const statuses = (item.status && item.status.alert_spend_statuses) || [];
      for (const alert of item.budget.alert_configurations) {
        const status = statuses.find((s) => s.alert_configuration_id === alert.alert_configuration_id) || null;
        rows.push({ item, alert, status });
      }
    }
    return rows;
  }

  function renderBudgets(items) {
    $('budgets-block').hidden = false;
    tables.budgets.rows(
      budgetRows(items),
      ({ item, alert, status }) => {
        const row = el('tr', { 'data-testid': 'budget-row', dataset: { budgetId: item.budget.budget_configuration_id } }, [
          cell(item.budget.display_name, 'budget-name', { header: true }),
          cell(filterSummary(item.budget.filter), 'budget-filter'),
          cell(alert.time_period === 'DAY' ? 'day' : 'month', 'budget-period'),
          amountCell(status ? status.threshold : alert.quantity_threshold, alert.quantity_type, 'budget-threshold'),
          amountCell(status ? status.spend : null, alert.quantity_type, 'budget-spend'),
        ]);
        if (status) {
          const used = el('td', { className: 'num' }, [
            el('span', { 'data-testid': 'budget-percent', text: `${status.percent_consumed}%` }),
          ]);
          const meter = el('meter', { min: '0', max: '100', low: '80', high: '99.9', optimum: '0', 'aria-hidden': 'true' });
          meter.value = Math.min(100, height(status.percent_consumed));
          used.append(meter);
          row.append(used);
        } else {
          row.append(cell(item.problem ? `unavailable: ${item.problem}` : 'unavailable', 'budget-percent'));
        }
        row.append(cell(actionsOf(alert), 'budget-action'));
        return row;
      },
      'No budgets yet.',
    );
  }

  function saveBudgetsCsv() {
    if (!state.budgets) return;
    const rows = budgetRows(state.budgets).map(({ item, alert, status }) => [
      item.budget.budget_configuration_id,
      item.budget.display_name,
      filterSummary(item.budget.filter),
      alert.alert_configuration_id,
      alert.time_period,
      alert.quantity_type,
      status ? status.threshold : plain(alert.quantity_threshold),
      status ? status.spend : '',
      status ? status.percent_consumed : '',
      status ? String(status.blocking) : '',
      (alert.action_configurations || []).map((a) => a.action_type).join(' '),
      item.problem,
    ]);
    saveCsv(
      `billing-budgets_account-${fileSafe(session.viewer.account_id)}.csv`,
      [
        'budget_configuration_id', 'display_name', 'filter', 'alert_configuration_id', 'time_period',
        'quantity_type', 'threshold', 'spend', 'percent_consumed', 'blocking', 'actions', 'problem',
      ],
      rows,
    );
  }

  // ---------------------------------------------------------------- start

  function start() {
    buildTables();
    wireFilters();
    $('sign-in-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) {
        showAlert('Enter an access token to sign in.');
        $('token').focus();
        return;
      }
      if (!/^[\x21-\x7e]+$/.test(token)) {
        showAlert('Sign-in failed: a token holds printable ASCII characters only.');
        $('token').focus();
        return;
      }
      signIn(token, false);
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    window.addEventListener('hashchange', () => {
      if (session.viewer) showView(currentView(), true);
    });
    for (const link of document.querySelectorAll('#views-nav a')) {
      link.addEventListener('click', (event) => {
        if (window.location.hash === link.hash) {
          event.preventDefault();
          showView(link.dataset.view, true);
        }
      });
    }
    $('pricing-endpoint').addEventListener('change', () => selectPricing($('pricing-endpoint').value));
    $('endpoint-select').addEventListener('change', () => {
      const key = $('endpoint-select').value;
      state.drill = state.choices.find((c) => c.key === key) || (state.drill && state.drill.key === key ? state.drill : null);
      loadDrill();
    });
    $('series-details').addEventListener('toggle', renderSeriesTable);
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(chartsFitWidth, 200);
    });
    const saved = storedToken();
    if (saved) {
      signIn(saved, true);
    } else {
      clearAll();
      showSignIn();
      setBodyState('signed-out');
    }
  }

  start();
})();
