// The larger view: a modal dialog with the image, its tag, rank, score and source link.
// Esc closes it (native dialog), arrow keys step through the ranking, loading pages as needed.
import { formatScore, safeUrl } from './text.js';
import { tileContent } from './results.js';
import { EVENTS } from './events.js';

export function mountViewer(hub, { dialog, figure, title, meta, source, siteRoot }) {
  let tag = '';
  let total = 0;
  let items = [];
  let more = false;
  let index = -1;
  let pending = null; // index waiting for the next page

  function show(i) {
    const item = items[i];
    if (!item) return;
    index = i;
    pending = null;
    const rank = item.rank ?? i + 1;
    const url = safeUrl(item.thumb, siteRoot, true);
    figure.replaceChildren(tileContent({ ...item, rank }, tag, url));
    title.textContent = tag;
    const score = formatScore(item.score);
    meta.textContent = `Rank ${rank} of ${total}${score ? ` · score ${score}` : ' · index order, no score'}`;
    meta.dataset.rank = String(rank);
    // only an absolute http(s) source is linked; anything else is shown as text
    const href = safeUrl(item.uri, siteRoot, false);
    source.replaceChildren();
    if (href) {
      const a = document.createElement('a');
      a.href = href;
      a.rel = 'noopener noreferrer nofollow';
      a.target = '_blank';
      a.textContent = 'Source';
      source.append(a);
    } else if (typeof item.uri === 'string' && item.uri) {
      source.textContent = `Source: ${item.uri}`;
    }
    if (!dialog.open) dialog.showModal();
    // the source link may have held focus and just been replaced
    if (!dialog.contains(document.activeElement)) dialog.querySelector('[autofocus]')?.focus();
  }

  function go(step) {
    const next = index + step;
    if (next < 0) return;
    if (next < items.length) { show(next); return; }
    if (more && pending === null) {
      pending = next;
      meta.textContent = 'Loading more…';
      hub.emit(EVENTS.RESULTS_MORE);
    }
  }

  hub.on(EVENTS.RESULTS_START, ({ tag: t, total: n }) => {
    tag = t;
    total = n;
    items = [];
    more = false;
    pending = null;
    if (dialog.open) dialog.close();
  });
  hub.on(EVENTS.RESULTS_PAGE, ({ items: page, more: hasMore }) => {
    items = items.concat(page);
    more = hasMore;
    if (pending !== null && dialog.open) show(pending);
  });
  hub.on(EVENTS.RESULTS_CLEAR, () => { if (dialog.open) dialog.close(); });
  hub.on(EVENTS.VIEW, ({ index: i }) => show(i));

  document.addEventListener('keydown', (ev) => {
    if (!dialog.open || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowDown') { ev.preventDefault(); go(1); }
    else if (ev.key === 'ArrowLeft' || ev.key === 'ArrowUp') { ev.preventDefault(); go(-1); }
  });
  dialog.addEventListener('click', (ev) => {
    const step = ev.target.closest('[data-step]');
    if (step) go(Number(step.dataset.step));
    else if (ev.target.closest('[data-close]') || ev.target === dialog) dialog.close();
  });
  dialog.addEventListener('close', () => {
    pending = null;
    if (index >= 0) hub.emit(EVENTS.VIEWER_CLOSED, { index });
  });
}
