/* Cases made offline, kept in IndexedDB with their photos until the service has them. A case
   leaves the store only after the service has answered 2xx for it, so closing the page, a
   reload or a failed upload loses nothing. */

const DB_NAME = "cites-vision";
const DB_VERSION = 1;
const STORE = "cases";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      if (!db.objectStoreNames.contains(STORE)) {
        db.createObjectStore(STORE, { keyPath: "case_id" }).createIndex("made_at", "made_at");
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, work) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      let result;
      Promise.resolve(work(tx.objectStore(STORE))).then((value) => {
        result = value;
      });
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error("aborted"));
    });
  } finally {
    db.close();
  }
}

const requestValue = (request) => new Promise((resolve, reject) => {
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

/** Keep a new case (durably: resolves once the transaction has committed). */
export function saveCase(record) {
  return run("readwrite", (store) => {
    store.put(record);
  });
}

/** Every case waiting, oldest first. */
export async function listCases() {
  const all = await run("readonly", (store) => requestValue(store.index("made_at").getAll()));
  return all || [];
}

/** Update fields of a case (e.g. the error of a refused upload). */
export async function updateCase(caseId, fields) {
  return run("readwrite", async (store) => {
    const record = await requestValue(store.get(caseId));
    if (record) store.put({ ...record, ...fields });
  });
}

/** Forget a case the service has stored. */
export function deleteCase(caseId) {
  return run("readwrite", (store) => {
    store.delete(caseId);
  });
}
