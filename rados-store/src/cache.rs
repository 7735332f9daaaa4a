//! A process-wide cache of sealed objects' bytes (format-spec/rados.md §3: sealed layer files
//! never change and their names are never reused, so a cached block is never stale).
//!
//! Blocks of [`BLOCK`] bytes keyed by (object key, block index), least recently used evicted
//! first, bounded by a byte budget. Reads larger than [`MAX_CACHED_READ`] bypass the cache
//! (sequential streams would only evict the small random reads it is for).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Cache block size: the default subcluster, the unit of small guest reads. A miss reads only
/// the blocks it needs, so a cold random read costs what an uncached one does.
pub const BLOCK: u64 = 4096;
/// Reads up to this size go through the cache.
pub const MAX_CACHED_READ: usize = 64 * 1024;

type Key = (Arc<str>, u64);

struct Lru {
    budget: u64,
    used: u64,
    tick: u64,
    map: HashMap<Key, (Arc<[u8]>, u64)>,
    order: BTreeMap<u64, Key>,
}

fn cache() -> MutexGuard<'static, Lru> {
    static C: OnceLock<Mutex<Lru>> = OnceLock::new();
    C.get_or_init(|| {
        Mutex::new(Lru {
            budget: 0,
            used: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

/// Sets the byte budget (the largest asked for so far wins; 0 disables caching).
pub fn set_budget(bytes: u64) {
    let mut c = cache();
    c.budget = c.budget.max(bytes);
}

/// The cached block, if any (and marks it recently used).
pub fn get(obj: &Arc<str>, block: u64) -> Option<Arc<[u8]>> {
    let mut c = cache();
    let key = (obj.clone(), block);
    c.tick += 1;
    let tick = c.tick;
    let (data, old) = {
        let e = c.map.get_mut(&key)?;
        let old = std::mem::replace(&mut e.1, tick);
        (e.0.clone(), old)
    };
    c.order.remove(&old);
    c.order.insert(tick, key);
    Some(data)
}

/// Inserts a block, evicting the least recently used ones past the budget.
pub fn put(obj: &Arc<str>, block: u64, data: Arc<[u8]>) {
    let mut c = cache();
    if c.budget == 0 || data.len() as u64 > c.budget {
        return;
    }
    c.tick += 1;
    let tick = c.tick;
    let key = (obj.clone(), block);
    let len = data.len() as u64;
    if let Some((old, t)) = c.map.insert(key.clone(), (data, tick)) {
        c.used -= old.len() as u64;
        c.order.remove(&t);
    }
    c.used += len;
    c.order.insert(tick, key);
    while c.used > c.budget {
        let Some((_, k)) = c.order.pop_first() else {
            break;
        };
        if let Some((d, _)) = c.map.remove(&k) {
            c.used -= d.len() as u64;
        }
    }
}

/// Bytes cached now (for tests and reports).
pub fn used() -> u64 {
    cache().used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        set_budget(3 * BLOCK);
        let before = used();
        let k: Arc<str> = Arc::from("test-evict");
        let blk = |v: u8| Arc::<[u8]>::from(vec![v; BLOCK as usize]);
        put(&k, 0, blk(0));
        put(&k, 1, blk(1));
        put(&k, 2, blk(2));
        assert!(get(&k, 0).is_some()); // 0 is now the most recent
        put(&k, 3, blk(3));
        assert!(
            get(&k, 1).is_none(),
            "the least recently used block goes first"
        );
        assert_eq!(get(&k, 0).unwrap()[0], 0);
        assert_eq!(get(&k, 3).unwrap()[0], 3);
        assert!(used() <= 3 * BLOCK && used() >= before);
    }
}
