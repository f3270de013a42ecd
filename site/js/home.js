// The home page: short facts about the collection, its popular tags each with its top image,
// and every tag A–Z, one tag shard a page. Shown when there is no query.
import { formatCount, safeUrl } from './text.js';
import { reportUrl, REPORT_LINK_TEXT } from './header.js';
import { placeholder, tagWithCount } from './results.js';
import { EVENTS } from './events.js';

const LETTERS = 'abcdefghijklmnopqrstuvwxyz'.split('');

function tagLink(entry, hub) {
  const a = document.createElement('a');
  a.href = `?${new URLSearchParams({ q: entry.tag })}`;
  a.dataset.tag = entry.tag;
  a.addEventListener('click', (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    hub.emit(EVENTS.SEARCH, { text: entry.tag, push: true });
  });
  return a;
}

function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString().slice(0, 10);
}

export function mountHome(hub, { section, facts, popular, letters, list, pager, siteRoot }) {
  let manifest = null;
  let shown = false;

  function renderFacts() {
    if (!manifest) return;
    const c = manifest.counts || {};
    const built = when(manifest.generated_at);
    facts.replaceChildren(`${formatCount(c.images)} images under ${formatCount(c.tags)} tags${built ? `, built ${built}` : ''}. `);
    const href = reportUrl(manifest, siteRoot);
    if (href) {
      const a = document.createElement('a');
      a.href = href;
      a.textContent = REPORT_LINK_TEXT;
      facts.append(a);
    }
  }

  hub.on(EVENTS.MANIFEST, (m) => { manifest = m; renderFacts(); });
  hub.on(EVENTS.QUERY, ({ tag }) => { shown = !tag; section.hidden = !shown; });

  hub.on(EVENTS.HOME, ({ popular: tags }) => {
    if (!shown) return;
    section.hidden = false;
    popular.replaceChildren(...tags.map((entry) => {
      const li = document.createElement('li');
      const a = tagLink(entry, hub);
      a.className = 'pop';
      const url = safeUrl(entry.thumb, siteRoot, true);
      if (url) {
        const img = document.createElement('img');
        img.loading = 'lazy';
        img.decoding = 'async';
        img.alt = '';
        img.addEventListener('error', () => img.replaceWith(placeholder()), { once: true });
        img.src = url;
        a.append(img);
      } else a.append(placeholder());
      const cap = document.createElement('span');
      cap.className = 'cap';
      cap.append(...tagWithCount(entry));
      a.append(cap);
      li.append(a);
      return li;
    }));
    if (!letters.children.length) {
      letters.replaceChildren(...LETTERS.map((letter) => {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = letter.toUpperCase();
        b.dataset.prefix = letter;
        b.setAttribute('aria-label', `Tags from ${letter.toUpperCase()}`);
        return b;
      }));
    }
  });

  letters.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-prefix]');
    if (b) hub.emit(EVENTS.BROWSE, { prefix: b.dataset.prefix });
  });
  pager.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-shard]');
    if (b) hub.emit(EVENTS.BROWSE, { shard: Number(b.dataset.shard) });
  });

  hub.on(EVENTS.BROWSE_PAGE, ({ shard, shards, entries }) => {
    list.replaceChildren(...entries.map((entry) => {
      const li = document.createElement('li');
      const a = tagLink(entry, hub);
      a.textContent = entry.tag;
      const c = document.createElement('span');
      c.className = 'count';
      c.textContent = formatCount(entry.count);
      li.append(a, ' ', c);
      return li;
    }));
    list.hidden = false;
    const button = (label, target, text) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = text;
      b.setAttribute('aria-label', label);
      b.dataset.shard = String(target);
      b.disabled = target < 0 || target >= shards;
      return b;
    };
    const where = document.createElement('span');
    where.className = 'count';
    where.textContent = entries.length ? `${entries[0].tag} – ${entries[entries.length - 1].tag}` : '';
    pager.replaceChildren(button('Previous tags', shard - 1, '‹ Previous'), where, button('Next tags', shard + 1, 'Next ›'));
    pager.hidden = false;
    list.querySelector('a')?.focus();
  });
}
