// The home page: short facts about the collection, its popular tags each with its top image,
// and every tag A–Z: a button for each letter that has tags, each letter's tags a page at a time,
// grouped and ordered by their first letter without accents (export/home.py). Shown when there
// is no query.
import { formatCount, safeUrl } from './text.js';
import { placeholder, tagWithCount } from './results.js';
import { EVENTS } from './events.js';

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
    facts.replaceChildren(`${formatCount(c.images)} images under ${formatCount(c.tags)} tags${built ? `, built ${built}` : ''}.`);
  }

  function renderLetters() {
    const rows = (Array.isArray(manifest?.az?.letters) ? manifest.az.letters : [])
      .filter((r) => Array.isArray(r) && typeof r[0] === 'string' && /^[a-z#]$/.test(r[0]));
    letters.replaceChildren(...rows.map(([letter, count]) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = letter === '#' ? '#' : letter.toUpperCase();
      b.dataset.letter = letter;
      b.setAttribute('aria-pressed', 'false');
      const name = letter === '#' ? 'not starting with a letter' : `from ${letter.toUpperCase()}`;
      b.setAttribute('aria-label', `Tags ${name} (${formatCount(Number(count) || 0)})`);
      return b;
    }));
  }

  hub.on(EVENTS.MANIFEST, (m) => { manifest = m; renderFacts(); renderLetters(); });
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
  });

  letters.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-letter]');
    if (b) hub.emit(EVENTS.BROWSE, { letter: b.dataset.letter, page: 0 });
  });
  pager.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-page]');
    if (b) hub.emit(EVENTS.BROWSE, { letter: b.dataset.letter, page: Number(b.dataset.page) });
  });

  hub.on(EVENTS.BROWSE_PAGE, ({ letter, page, pages, entries }) => {
    for (const b of letters.children) b.setAttribute('aria-pressed', String(b.dataset.letter === letter));
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
      b.dataset.letter = letter;
      b.dataset.page = String(target);
      b.disabled = target < 0 || target >= pages;
      return b;
    };
    const where = document.createElement('span');
    where.className = 'count';
    where.textContent = entries.length ? `${entries[0].tag} – ${entries[entries.length - 1].tag}` : '';
    if (pages > 1) {
      pager.replaceChildren(button('Previous tags', page - 1, '‹ Previous'), where, button('Next tags', page + 1, 'Next ›'));
    } else pager.replaceChildren(where);
    pager.hidden = false;
    list.querySelector('a')?.focus();
  });
}
