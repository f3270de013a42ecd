// After a tag's own images: images crawled under another tag that probably show this one, each
// with its evidence (its neighbours' tags, the matcher), clearly apart from the ranking.
import { safeUrl } from './text.js';
import { tileContent } from './results.js';
import { EVENTS } from './events.js';

export function evidence(item, tag) {
  const parts = [];
  const n = Array.isArray(item.neighbours) ? item.neighbours : [];
  if (Number.isFinite(n[0]) && Number.isFinite(n[1])) parts.push(`${n[0]} of its ${n[1]} nearest images are “${tag}”`);
  const sd = (z) => `${Math.abs(z).toFixed(1)} σ ${z >= 0 ? 'above' : 'below'}`;
  if (Number.isFinite(item.matcher)) parts.push(`the matcher: ${sd(item.matcher)} “${tag}”'s typical image`);
  if (Number.isFinite(item.own_score)) parts.push(`${sd(item.own_score)} the typical “${item.tag}”, its crawled tag`);
  return parts.join('; ');
}

export function mountProbably(hub, { section, title, list, siteRoot }) {
  let items = [];
  let tag = '';

  function clear() {
    items = [];
    list.replaceChildren();
    section.hidden = true;
  }

  hub.on(EVENTS.RESULTS_START, clear);
  hub.on(EVENTS.RESULTS_CLEAR, clear);
  hub.on(EVENTS.RESULTS_UNKNOWN, clear);

  hub.on(EVENTS.PROBABLY, ({ tag: t, items: strip }) => {
    tag = t;
    items = strip.map((it) => ({ ...it, probable: t }));
    title.textContent = `Probably “${t}”, crawled under another tag`;
    list.replaceChildren(...items.map((item, i) => {
      const li = document.createElement('li');
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'tile';
      btn.dataset.index = String(i);
      const why = evidence(item, t);
      btn.setAttribute('aria-label', `Probably “${t}”, crawled as “${item.tag}”: open larger`);
      btn.title = why;
      btn.append(tileContent({ ...item, rank: i + 1 }, t, safeUrl(item.thumb, siteRoot, true)));
      const cap = document.createElement('span');
      cap.className = 'cap crawled';
      cap.textContent = `crawled as “${item.tag}”`;
      const ev = document.createElement('span');
      ev.className = 'evidence';
      ev.textContent = why;
      btn.append(cap, ev);
      li.append(btn);
      return li;
    }));
    section.hidden = false;
  });

  list.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button.tile');
    if (!btn) return;
    hub.emit(EVENTS.VIEW_ITEM, { items, index: Number(btn.dataset.index), label: `Probably “${tag}”` });
  });
}
