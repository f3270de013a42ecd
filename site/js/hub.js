// A tiny event hub: components talk only through it, never to each other.
export function createHub() {
  const handlers = new Map();
  return {
    on(type, fn) {
      if (!handlers.has(type)) handlers.set(type, new Set());
      handlers.get(type).add(fn);
      return () => handlers.get(type).delete(fn);
    },
    emit(type, detail) {
      for (const fn of [...(handlers.get(type) || [])]) {
        // one failing listener must not silence the others
        try { fn(detail); } catch (err) { console.error(err); }
      }
    },
  };
}
